"""How loaded a model replica is: rates measured over its recent past (`LoadMeter`), and the
snapshot it reports for routing and admission (`replica_load`). No tensors; the clock is injected.

The engine feeds the meter from its loop: each step's duration and the prompt tokens it
prefilled, each first token, each request that leaves the running batch. Step measures keep the
last steps, so a rate stays known while the replica idles (it says what the replica can do);
finishes and first-token times keep a time window (they say what it does now).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from museserve.engine.plan import SchedulerPlan
from museserve.messages import PriorityLoad, ReplicaLoad

if TYPE_CHECKING:
    from museserve.engine.scheduler import Scheduler

RECENT_STEPS = 64  # steps behind step_s, and prefill steps behind the prefill rate
WINDOW_S = 15.0  # finishes and first tokens count this far back
MIN_SPAN_S = 1.0  # a rate over less time than this is noise: the span never counts as shorter
MAX_FIRST_TOKENS = 2048  # first-token times kept for the percentile, newest
QUEUE_WINDOW_S = 10.0  # queue waits count this far back: short, so a drained queue reads so soon
MAX_STARTS = 512  # queue waits kept per priority, newest


class LoadMeter:
    """Recording costs O(1) amortised; reading costs at most the kept samples (bounded)."""

    def __init__(self, *, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._window_s = window_s
        self._step_s: deque[float] = deque(maxlen=RECENT_STEPS)
        self._prefill_rates: deque[float] = deque(maxlen=RECENT_STEPS)  # tokens/s of steps that prefilled
        self._finishes: deque[float] = deque()  # clock times, oldest first
        self._first_tokens: deque[tuple[float, float]] = deque(maxlen=MAX_FIRST_TOKENS)  # (clock, seconds)
        self._since: float | None = None  # the first observation: a young replica's rates span only this far
        self._starts: dict[int, deque[tuple[float, float]]] = {}  # priority -> (clock, queue seconds)

    # -- fed by the engine -----------------------------------------------------------

    def step(self, duration_s: float, prefill_tokens: int, batched_tokens: int | None = None) -> None:
        """A step came back after `duration_s` on the device, having computed `batched_tokens`
        tokens (default: `prefill_tokens`), `prefill_tokens` of them prompt tokens."""
        self._observed()
        self._step_s.append(duration_s)
        # Only a step that mostly prefilled measures the prefill rate: beside many decodes a few
        # prompt tokens say more about the decodes' cost (per row, higher) than their own.
        if prefill_tokens > 0 and duration_s > 0 and 2 * prefill_tokens >= (batched_tokens or prefill_tokens):
            self._prefill_rates.append(prefill_tokens / duration_s)

    def finished(self) -> None:
        """A request left the running batch (finished, cancelled or failed after it started)."""
        now = self._observed()
        self._finishes.append(now)
        self._forget_before(now - self._window_s)

    def first_token(self, since_arrival_s: float) -> None:
        now = self._observed()
        self._first_tokens.append((now, since_arrival_s))

    def started(self, priority: int, queue_s: float) -> None:
        """A request of `priority` was scheduled for the first time, `queue_s` after its arrival."""
        now = self._observed()
        self._starts.setdefault(priority, deque(maxlen=MAX_STARTS)).append((now, queue_s))

    # -- read -----------------------------------------------------------------------

    @property
    def prefill_tokens_per_s(self) -> float:
        """Prompt tokens per second of the recent steps that mostly prefilled, the median: one
        slow step (the first, warming the kernels up; one that waited on the host) does not
        move it. 0.0 before any."""
        if not self._prefill_rates:
            return 0.0
        return statistics.median(self._prefill_rates)

    @property
    def step_s(self) -> float:
        return sum(self._step_s) / len(self._step_s) if self._step_s else 0.0

    @property
    def finishes_per_s(self) -> float:
        """Requests that left the batch per second over the window, or over the time observed
        when that is shorter; 0.0 when none did."""
        now = self._clock()
        self._forget_before(now - self._window_s)
        if not self._finishes or self._since is None:
            return 0.0
        span = max(MIN_SPAN_S, min(self._window_s, now - self._since))
        return len(self._finishes) / span

    @property
    def ttft_p90_s(self) -> float:
        """The 90th percentile (nearest rank) of arrival to first token over the window; 0.0 when none."""
        return _p90([s for at, s in self._first_tokens if at >= self._clock() - self._window_s])

    def queue_p90_s(self, priority: int) -> float:
        """The 90th percentile of arrival to first scheduled step of `priority`'s requests over
        the last `QUEUE_WINDOW_S`: the wait they met, measured; 0.0 when none started lately."""
        starts = self._starts.get(priority, ())
        return _p90([s for at, s in starts if at >= self._clock() - QUEUE_WINDOW_S])

    def _observed(self) -> float:
        now = self._clock()
        if self._since is None:
            self._since = now
        return now

    def _forget_before(self, oldest: float) -> None:
        while self._finishes and self._finishes[0] < oldest:
            self._finishes.popleft()


def _p90(values: list[float]) -> float:
    """Nearest rank; 0.0 for none."""
    if not values:
        return 0.0
    return sorted(values)[math.ceil(0.9 * len(values)) - 1]


def prefill_tokens(plan: SchedulerPlan) -> int:
    """Prompt tokens a step computes: the tokens of its sequences other than decodes (one token
    that samples). Slots for proposed tokens beside a decode are not prompt tokens."""
    return sum(item.num_new_tokens for item in plan.sequences if not (item.samples and item.num_new_tokens == 1))


def replica_load(scheduler: Scheduler, kv_usage: float, meter: LoadMeter) -> ReplicaLoad:
    """The replica's load now: one pass over its sequences (running, then waiting)."""
    counts: dict[int, list[int]] = {}  # priority -> [running, waiting, waiting tokens]
    backlog = 0
    for seq in scheduler.running:
        counts.setdefault(seq.priority, [0, 0, 0])[0] += 1
        backlog += seq.num_prefill_tokens_left
    waiting = 0
    for seq in scheduler.waiting_sequences():
        entry = counts.setdefault(seq.priority, [0, 0, 0])
        entry[1] += 1
        entry[2] += seq.num_uncomputed_tokens
        waiting += 1
    return ReplicaLoad(
        running=scheduler.num_running,
        waiting=waiting,
        kv_usage=kv_usage,
        max_running=scheduler.limits.max_running,
        prefill_backlog_tokens=backlog,
        by_priority=tuple(PriorityLoad(p, *counts[p], meter.queue_p90_s(p)) for p in sorted(counts)),
        prefill_tokens_per_s=meter.prefill_tokens_per_s,
        finishes_per_s=meter.finishes_per_s,
        step_s=meter.step_s,
        ttft_p90_s=meter.ttft_p90_s,
        taken_at=time.time(),
    )
