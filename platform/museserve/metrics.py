"""What an engine reports, and where it goes.

The engine calls a `MetricsRecorder` it is given. `EngineMetrics` exports Prometheus metrics
through Ray's metrics agent on every node (the Serve deployment's); `InMemoryMetrics` keeps the
same observations in this process, in the same buckets (tests, benchmarks, engines run without
Ray). Names and buckets follow the conventions of the LLM-serving field (vLLM's set, with the
`museserve_` prefix; Ray's exporter adds `ray_`), labelled by `model` (the pool). Ray is imported
only when an `EngineMetrics` is built, so the engine imports where Ray is not installed.
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from typing import Protocol

TTFT_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
]
ITL_BUCKETS = [
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
]
REQUEST_BUCKETS = [
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
]

_MODEL = ("model",)


class MetricsRecorder(Protocol):
    """What one model replica's engine reports; every method must be cheap (no I/O)."""

    def scheduled_first(self, queue_s: float, prompt_tokens: int, cached_tokens: int) -> None:
        """A request is scheduled for the first time: its queue time, prompt and prefix-cache hit."""
        ...

    def token(self, since_last_s: float, first: bool) -> None:
        """A token reached a request: time to first token, or time since its previous token."""
        ...

    def step(self, running: int, waiting: int, kv_usage: float, generated_tokens: int) -> None:
        """Once per engine step: the state after it, and the tokens it generated."""
        ...

    def ended(self, e2e_s: float, reason: str) -> None:
        """A request ended: arrival to end, and its finish reason (or cancelled / failed)."""
        ...

    def kv_tier(self, hit_tokens: int, saved_blocks: int, loaded_blocks: int) -> None:
        """A step copies blocks to and from the second KV tier: prompt tokens first admissions found
        there (a part of the prefix-cache hits), blocks saved to it and blocks loaded back."""
        ...

    def dropped(self, reason: str) -> None:
        """A request ended before it started: `deadline` (it could not start in time), `objective`
        (nor within its tier's time-to-first-token objective) or `client_gone`."""
        ...

    def preempted(self, reason: str, count: int) -> None:
        """A step preempted `count` running requests: `kv` (a running one needed blocks) or
        `priority` (a waiting one of a better priority needed the room)."""
        ...

    def speculated(self, num_proposed: int, num_accepted: int) -> None:
        """A step verified `num_proposed` proposed tokens of one request and accepted the first
        `num_accepted` (vLLM's spec_decode counters: one draft, its tokens, per position)."""
        ...


class BucketCounts:
    """A histogram in memory: counts per upper bound (Prometheus `le` buckets, +Inf last)."""

    def __init__(self, bounds: list[float]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value


class InMemoryMetrics:
    """The engine's metrics kept in this process, in constant memory however long it runs."""

    def __init__(self) -> None:
        self.ttft = BucketCounts(TTFT_BUCKETS)
        self.itl = BucketCounts(ITL_BUCKETS)
        self.e2e = BucketCounts(REQUEST_BUCKETS)
        self.queue = BucketCounts(REQUEST_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.kv_tier_hits = 0
        self.kv_tier_saves = 0
        self.kv_tier_loads = 0
        self.finished: collections.Counter[str] = collections.Counter()  # by finish reason
        self.drops: collections.Counter[str] = collections.Counter()  # by reason
        self.preemptions: collections.Counter[str] = collections.Counter()  # by reason
        self.spec_drafts = 0
        self.spec_draft_tokens = 0
        self.spec_accepted_tokens = 0
        self.spec_accepted_per_position: collections.Counter[int] = collections.Counter()
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0

    def scheduled_first(self, queue_s: float, prompt_tokens: int, cached_tokens: int) -> None:
        self.queue.observe(queue_s)
        self.prompt_tokens += prompt_tokens
        self.prefix_queries += prompt_tokens
        self.prefix_hits += cached_tokens

    def token(self, since_last_s: float, first: bool) -> None:
        (self.ttft if first else self.itl).observe(since_last_s)

    def step(self, running: int, waiting: int, kv_usage: float, generated_tokens: int) -> None:
        self.running, self.waiting, self.kv_usage = running, waiting, kv_usage
        self.generation_tokens += generated_tokens

    def ended(self, e2e_s: float, reason: str) -> None:
        self.e2e.observe(e2e_s)
        self.finished[reason] += 1

    def kv_tier(self, hit_tokens: int, saved_blocks: int, loaded_blocks: int) -> None:
        self.kv_tier_hits += hit_tokens
        self.kv_tier_saves += saved_blocks
        self.kv_tier_loads += loaded_blocks

    def dropped(self, reason: str) -> None:
        self.drops[reason] += 1

    def preempted(self, reason: str, count: int) -> None:
        self.preemptions[reason] += count

    def speculated(self, num_proposed: int, num_accepted: int) -> None:
        self.spec_drafts += 1
        self.spec_draft_tokens += num_proposed
        self.spec_accepted_tokens += num_accepted
        for position in range(num_accepted):
            self.spec_accepted_per_position[position] += 1

    @property
    def spec_acceptance_rate(self) -> float:
        return self.spec_accepted_tokens / self.spec_draft_tokens if self.spec_draft_tokens else 0.0

    @property
    def spec_mean_accepted_length(self) -> float:
        """Tokens a verifying step yields per request on average: the accepted ones plus the target's own."""
        return 1 + self.spec_accepted_tokens / self.spec_drafts if self.spec_drafts else 0.0


class EngineMetrics:
    """The engine's metrics as Ray metrics. Outside a Ray worker they accept observations and
    export nothing."""

    def __init__(self, model: str):
        from ray.util.metrics import Counter, Gauge, Histogram  # here: the engine itself runs without Ray

        self._tags = {"model": model}
        self.ttft = Histogram("museserve_time_to_first_token_seconds", "Time to first token.", TTFT_BUCKETS, _MODEL)
        self.itl = Histogram("museserve_inter_token_latency_seconds", "Time between tokens.", ITL_BUCKETS, _MODEL)
        self.e2e = Histogram("museserve_e2e_request_latency_seconds", "Arrival to last token.", REQUEST_BUCKETS, _MODEL)
        self.queue = Histogram(
            "museserve_request_queue_time_seconds", "Arrival to first schedule.", REQUEST_BUCKETS, _MODEL
        )
        self.prompt_tokens = Counter("museserve_prompt_tokens_total", "Prompt tokens of admitted requests.", _MODEL)
        self.generation_tokens = Counter("museserve_generation_tokens_total", "Tokens generated.", _MODEL)
        self.finished = Counter(
            "museserve_request_success_total", "Requests ended, by finish reason.", ("model", "finished_reason")
        )
        self.running = Gauge("museserve_num_requests_running", "Requests in the running batch.", _MODEL)
        self.waiting = Gauge("museserve_num_requests_waiting", "Requests waiting to be scheduled.", _MODEL)
        self.kv_usage = Gauge("museserve_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).", _MODEL)
        self.prefix_queries = Counter(
            "museserve_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", _MODEL
        )
        self.prefix_hits = Counter(
            "museserve_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", _MODEL
        )
        self.kv_tier_hits = Counter(
            "museserve_kv_tier_hits_total",
            "Prompt tokens found in the second KV tier (host or disk), a part of the prefix cache hits.",
            _MODEL,
        )
        self.kv_tier_saves = Counter(
            "museserve_kv_tier_saved_blocks_total", "KV blocks copied from the device cache to its second tier.", _MODEL
        )
        self.kv_tier_loads = Counter(
            "museserve_kv_tier_loaded_blocks_total", "KV blocks copied back from the second tier.", _MODEL
        )
        self.drops = Counter(
            "museserve_engine_requests_dropped_total",
            "Requests ended before they started: could not meet their deadline or their tier's TTFT objective, "
            "or the client left.",
            ("model", "reason"),
        )
        self.preemptions = Counter(
            "museserve_num_preemptions_total",
            "Running requests preempted (recomputed later): for blocks, or for a request of a better priority.",
            ("model", "reason"),
        )
        self.spec_drafts = Counter(
            "museserve_spec_decode_num_drafts_total", "Verifications of a request's proposed tokens.", _MODEL
        )
        self.spec_draft_tokens = Counter(
            "museserve_spec_decode_num_draft_tokens_total", "Proposed tokens verified.", _MODEL
        )
        self.spec_accepted_tokens = Counter(
            "museserve_spec_decode_num_accepted_tokens_total", "Proposed tokens accepted.", _MODEL
        )
        self.spec_accepted_per_position = Counter(
            "museserve_spec_decode_num_accepted_tokens_per_pos_total",
            "Proposed tokens accepted, by their position in the proposal (0: the first).",
            ("model", "position"),
        )

    def scheduled_first(self, queue_s: float, prompt_tokens: int, cached_tokens: int) -> None:
        self.queue.observe(queue_s, self._tags)
        self.prompt_tokens.inc(prompt_tokens, self._tags)
        self.prefix_queries.inc(prompt_tokens, self._tags)
        if cached_tokens:
            self.prefix_hits.inc(cached_tokens, self._tags)

    def token(self, since_last_s: float, first: bool) -> None:
        (self.ttft if first else self.itl).observe(since_last_s, self._tags)

    def step(self, running: int, waiting: int, kv_usage: float, generated_tokens: int) -> None:
        """Once per engine step: the gauges, and the tokens the step generated."""
        self.running.set(running, self._tags)
        self.waiting.set(waiting, self._tags)
        self.kv_usage.set(kv_usage, self._tags)
        if generated_tokens:
            self.generation_tokens.inc(generated_tokens, self._tags)

    def ended(self, e2e_s: float, reason: str) -> None:
        self.e2e.observe(e2e_s, self._tags)
        self.finished.inc(1, {**self._tags, "finished_reason": reason})

    def kv_tier(self, hit_tokens: int, saved_blocks: int, loaded_blocks: int) -> None:
        for counter, n in (
            (self.kv_tier_hits, hit_tokens),
            (self.kv_tier_saves, saved_blocks),
            (self.kv_tier_loads, loaded_blocks),
        ):
            if n:  # Ray's Counter refuses 0
                counter.inc(n, self._tags)

    def dropped(self, reason: str) -> None:
        self.drops.inc(1, {**self._tags, "reason": reason})

    def preempted(self, reason: str, count: int) -> None:
        if count:  # Ray's Counter refuses 0
            self.preemptions.inc(count, {**self._tags, "reason": reason})

    def speculated(self, num_proposed: int, num_accepted: int) -> None:
        self.spec_drafts.inc(1, self._tags)
        if num_proposed:  # Ray's Counter refuses 0
            self.spec_draft_tokens.inc(num_proposed, self._tags)
        if num_accepted:
            self.spec_accepted_tokens.inc(num_accepted, self._tags)
        for position in range(num_accepted):
            self.spec_accepted_per_position.inc(1, {**self._tags, "position": str(position)})
