"""Admission from the pools' live state: a request enters a pool only if its estimated wait
before its prefill can start fits its tier's TTFT objective and its deadline, with room to
spare (`admission.admit_within` of the smaller). Its own prefill is its own cost: an idle
pool admits any prompt the window allows.

The estimate (`queue_estimate`) rests on the replicas' own reports (`pool_loads`), the same in
every gateway replica, plus the requests this gateway sent since the oldest report it uses
was taken (which that report cannot show yet), spread over the replicas. The pool's router
sends a request to a lightly loaded replica, so the pool's estimate is its best replica's.

No fresh report (a pool just started, a `static` policy, reports older than
`admission.stale_after_s`): no estimate, and only the hard cap (`AdmissionControl`) bounds.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from museserve.config import GatewayConfig, PoolConfig
from museserve.gateway.pool_loads import PoolLoads
from museserve.gateway.queue_estimate import Ahead, Estimate, Preemption, first_token_estimate

MIN_RETRY_S, MAX_RETRY_S = 0.25, 30.0
UNKNOWN_RETRY_S = 1.0  # a full replica that has not measured its finish rate yet
IN_TRANSIT_S = 0.1  # a request sent this long before a report was taken may not be in it yet


@dataclass(frozen=True, slots=True)
class Verdict:
    admit: bool
    estimate: Estimate | None  # None: no fresh report to estimate from
    budget_s: float  # what the estimate had to fit: admit_within of the objective, or of the time to the deadline
    retry_after_s: float = 0.0  # when refused: about when the queue will have room for it


class LiveAdmission:
    def __init__(
        self,
        pools: Sequence[PoolConfig],
        gateway: GatewayConfig,
        loads: PoolLoads,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pools = {p.name: p for p in pools}
        self._gateway = gateway
        self._loads = loads  # in a Serve replica, this process's board (`pool_loads.POOL_LOADS`)
        self._clock = clock
        self._sent = {p.name: SentSinceReport() for p in pools}

    def objective_s(self, pool: str, tier: str) -> float:
        own = self._gateway.tier(tier).ttft_objective_s
        return own if own is not None else self._pools[pool].admission.ttft_objective_s

    def estimate(self, pool: str, priority: int, prompt_tokens: int) -> Estimate | None:
        """Such a request's wait and prefill on `pool`'s least waited replica; None without a
        fresh report."""
        config = self._pools[pool]
        if config.admission.policy == "static":
            return None
        now, stale_after = self._clock(), config.admission.stale_after_s
        fresh = [load for load in self._loads.of(pool).values() if now - load.taken_at <= stale_after]
        sent = self._sent[pool]
        sent.shown(min((load.taken_at for load in fresh), default=now - stale_after) - IN_TRANSIT_S)
        if not fresh:
            return None
        requests, tokens = sent.ahead_of(priority)
        ahead = Ahead(math.ceil(requests / len(fresh)), tokens // len(fresh))
        engine = config.engine
        preemption = Preemption(engine.priority_preemption, engine.min_low_priority_share)
        kv_full = config.routing.kv_saturation
        estimates = (first_token_estimate(load, prompt_tokens, priority, preemption, ahead, kv_full) for load in fresh)
        return min(estimates, key=lambda e: e.wait_s)

    def check(self, pool: str, tier: str, priority: int, prompt_tokens: int, deadline_unix_s: float) -> Verdict:
        within = self._pools[pool].admission.admit_within
        budget = within * min(self.objective_s(pool, tier), deadline_unix_s - self._clock())
        estimate = self.estimate(pool, priority, prompt_tokens)
        if estimate is None or estimate.wait_s <= budget:
            return Verdict(True, estimate, budget)
        wait = estimate.wait_s
        retry = UNKNOWN_RETRY_S if math.isinf(wait) else min(max(wait - budget, MIN_RETRY_S), MAX_RETRY_S)
        return Verdict(False, estimate, budget, retry)

    def sent(self, pool: str, priority: int, prompt_tokens: int) -> None:
        """A request admitted into `pool`: it counts as ahead of later ones until a report shows it."""
        self._sent[pool].add(self._clock(), priority, prompt_tokens)


class SentSinceReport:
    """One pool's requests this gateway sent that no report shows yet, with running totals per
    priority, so a decision costs the number of priorities, not of requests sent."""

    def __init__(self) -> None:
        self._sent: deque[tuple[float, int, int]] = deque()  # (sent at, priority, prompt tokens), oldest first
        self._totals: dict[int, list[int]] = {}  # priority -> [requests, prompt tokens]

    def add(self, at: float, priority: int, tokens: int) -> None:
        self._sent.append((at, priority, tokens))
        total = self._totals.setdefault(priority, [0, 0])
        total[0] += 1
        total[1] += tokens

    def shown(self, before: float) -> None:
        """Forgets those sent at or before `before`: a report taken since shows them."""
        while self._sent and self._sent[0][0] <= before:
            _, priority, tokens = self._sent.popleft()
            total = self._totals[priority]
            total[0] -= 1
            total[1] -= tokens

    def ahead_of(self, priority: int) -> tuple[int, int]:
        """Requests and prompt tokens of `priority` or better."""
        better = [total for p, total in self._totals.items() if p <= priority]
        return sum(t[0] for t in better), sum(t[1] for t in better)
