"""What a gateway does with a request when its pool is loaded: degrade it (where its tier's
policy says so), refuse it at once, or admit it with its first-token deadline set.

Two checks, both on `LiveAdmission`'s estimate:
- before the prompt is prepared: a pool whose wait is already past what admission allows
  refuses without tokenizing anything, and a pool past the tier's `degrade.at` of it makes
  the request cheaper before its prompt is rendered;
- once its prompt is known (its priority's wait, its own prefill): refused unless the wait
  fits. An admitted request counts against the pool until a report shows it, and carries its
  first-token deadline: arrival + objective + its own prefill.
A refusal is RESOURCE_EXHAUSTED with a retry delay taken from the estimate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from museserve.config import GatewayConfig, PoolConfig
from museserve.domain import ChatRequest
from museserve.errors import ResourceExhausted
from museserve.gateway.degrade import Degradation, degrade
from museserve.gateway.live_admission import LiveAdmission, Verdict
from museserve.gateway.observer import GatewayObserver
from museserve.messages import PreparedRequest

logger = logging.getLogger(__name__)


class OverloadGate:
    def __init__(self, live: LiveAdmission, gateway: GatewayConfig, observer: GatewayObserver) -> None:
        self.live = live
        self._gateway = gateway
        self._observer = observer

    def before_prepare(
        self, request: ChatRequest, pool: PoolConfig, deadline_unix_s: float
    ) -> tuple[ChatRequest, Degradation | None]:
        tier = self._gateway.tier(request.identity.tier)
        verdict = self.live.check(pool.name, request.identity.tier, tier.priority, 0, deadline_unix_s)
        if not verdict.admit:
            self._refuse(request.request_id, pool.name, request.identity.tier, verdict)
        estimate = verdict.estimate
        if tier.degrade is None or estimate is None or estimate.wait_s < tier.degrade.at * verdict.budget_s:
            return request, None
        degraded = degrade(request, pool, tier.degrade)
        if degraded is None:
            return request, None
        self._observer.degraded(pool.name, request.identity.tier, degraded.kind)
        logger.info("request %s tenant=%s degraded (%s): pool %s estimates a wait of %.2f s",
                    request.request_id, request.identity.tenant, degraded.describe(), pool.name, estimate.wait_s)  # fmt: skip
        return degraded.request, degraded

    def admit(self, prepared: PreparedRequest, tier: str, arrived_unix_s: float) -> PreparedRequest:
        """The prepared request, with its first-token deadline (from its arrival at the gateway)
        where its tier drops late ones."""
        pool = prepared.pool
        verdict = self.live.check(pool, tier, prepared.priority, prepared.num_prompt_tokens, prepared.deadline_unix_s)
        estimate = verdict.estimate
        if estimate is not None:
            self._observer.queue_estimate(pool, estimate.wait_s)
        if not verdict.admit:
            self._refuse(prepared.request_id, pool, tier, verdict)
        self.live.sent(pool, prepared.priority, prepared.num_prompt_tokens)
        if not self._gateway.tier(tier).drop_late:
            return prepared
        # The objective bounds the wait; the request's own prefill comes on top of it.
        own_prefill_s = estimate.prefill_s if estimate is not None else 0.0
        first_token_by = arrived_unix_s + self.live.objective_s(pool, tier) + own_prefill_s
        return replace(prepared, first_token_by_unix_s=first_token_by)

    def _refuse(self, request_id: str, pool: str, tier: str, verdict: Verdict) -> None:
        self._observer.decision("overloaded", tier)
        wait = verdict.estimate.wait_s if verdict.estimate is not None else math.inf
        said = "cannot estimate its wait yet" if math.isinf(wait) else f"estimates a wait of {wait:.1f} s"
        logger.info("request %s refused: model %s %s before its prefill, over %.1f s",
                    request_id, pool, said, verdict.budget_s)  # fmt: skip
        raise ResourceExhausted(
            f"model {pool} is overloaded: it {said} before this request's prefill could start, over the "
            f"{verdict.budget_s:.1f} s admission allows (a share of its tier's time-to-first-token objective, or of "
            f"the time left to its deadline); retry after {verdict.retry_after_s:.1f} s",
            retry_after_s=verdict.retry_after_s,
        )
