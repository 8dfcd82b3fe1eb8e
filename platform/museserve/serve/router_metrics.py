"""A pool router's decisions as Prometheus metrics, through Ray's metrics agent (the router
runs in each process that holds a handle to the pool: the gateway replicas).

Labelled by `model` (the pool), like the engine's metrics. The hit-rate gain is read from two
counters: blocks held by the replica each request was sent to, and blocks a uniformly random
choice among the same candidates would have found held (the mean over them); their difference
over the prompt blocks routed is what routing by prefix added to the hit rate.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

from museserve.routing.choice import Reason

DECISION_BUCKETS = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1]
STALENESS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]


class RouterMetrics:
    def __init__(self, pool: str) -> None:
        tags = {"model": pool}
        self._decisions = Counter(
            "museserve_router_decisions_total",
            "Routing decisions by reason: prefix_hit, load_fallback (held, but too busy), no_hit.",
            ("model", "reason"),
        )
        self._decisions.set_default_tags(tags)
        self._prompt_blocks = Counter(
            "museserve_router_prompt_blocks_total", "Full prompt blocks of the requests routed.", ("model",)
        )
        self._held_blocks = Counter(
            "museserve_router_held_blocks_total",
            "Of those, leading blocks the chosen replica held when the request was routed.",
            ("model",),
        )
        self._random_held_blocks = Counter(
            "museserve_router_random_held_blocks_total",
            "Leading blocks a uniformly random choice among the candidates would have found held (expected).",
            ("model",),
        )
        self._decision_seconds = Histogram(
            "museserve_router_decision_seconds",
            "Time to choose a replica: hashing the prompt, matching it, weighing the loads.",
            DECISION_BUCKETS,
            ("model",),
        )
        self._staleness = Histogram(
            "museserve_router_kv_event_staleness_seconds",
            "Age of a replica's KV-event batch when this router applied it.",
            STALENESS_BUCKETS,
            ("model",),
        )
        self._resyncs = Counter(
            "museserve_router_feed_resyncs_total",
            "Times this router lost a replica's KV-event sequence and rebuilt it from a snapshot.",
            ("model",),
        )
        self._index_blocks = Gauge(
            "museserve_router_index_blocks", "Block hashes this router knows replicas to hold.", ("model",)
        )
        for metric in (
            self._prompt_blocks,
            self._held_blocks,
            self._random_held_blocks,
            self._decision_seconds,
            self._staleness,
            self._resyncs,
            self._index_blocks,
        ):
            metric.set_default_tags(tags)

    def routed(self, reason: Reason, prompt_blocks: int, held: int, random_held: float, seconds: float) -> None:
        """One request sent: `held` leading blocks on the replica it went to (whatever chose it)."""
        self._decisions.inc(1, {"reason": reason.value})
        if prompt_blocks:
            self._prompt_blocks.inc(prompt_blocks)
        if held:
            self._held_blocks.inc(held)
        if random_held > 0:
            self._random_held_blocks.inc(random_held)
        self._decision_seconds.observe(seconds)

    def applied(self, staleness_s: list[float], resynced: bool, index_blocks: int) -> None:
        for age in staleness_s:
            self._staleness.observe(max(age, 0.0))
        if resynced:
            self._resyncs.inc(1)
        self._index_blocks.set(index_blocks)
