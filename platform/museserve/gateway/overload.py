"""What a gateway does with a request when its pool is loaded: degrade it (where its tier's
policy says so), refuse it at once, or admit it with its first-token deadline set.

Two checks, both on `LiveAdmission`'s estimate:
- before the prompt is prepared, the pool's wait with no prompt of its own: a pool already past
  what admission allows refuses without tokenizing anything, and a pool past the tier's
  `degrade.at` of it makes the request cheaper before its prompt is rendered;
- once its prompt is known, the wait with it: refused unless it fits the objective and the
  deadline. An admitted request counts against the pool until a report shows it.
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
        estimate = verdict.estimate_s
        if tier.degrade is None or estimate is None or estimate < tier.degrade.at * verdict.budget_s:
            return request, None
        degraded = degrade(request, pool, tier.degrade)
        if degraded is not None:
            self._observer.degraded(pool.name, request.identity.tier, degraded.kind)
            logger.info("request %s tenant=%s degraded (%s): pool %s estimates %.2f s to a first token",
                        request.request_id, request.identity.tenant, degraded.describe(), pool.name, estimate)  # fmt: skip
            return degraded.request, degraded
        return request, None

    def admit(self, prepared: PreparedRequest, tier: str, arrived_unix_s: float) -> PreparedRequest:
        """The prepared request, with its first-token deadline (from its arrival at the gateway)
        where its tier drops late ones."""
        pool = prepared.pool
        verdict = self.live.check(pool, tier, prepared.priority, prepared.num_prompt_tokens, prepared.deadline_unix_s)
        if verdict.estimate_s is not None:
            self._observer.queue_estimate(pool, verdict.estimate_s)
        if not verdict.admit:
            self._refuse(prepared.request_id, pool, tier, verdict)
        self.live.sent(pool, prepared.priority, prepared.num_prompt_tokens)
        if not self._gateway.tier(tier).drop_late:
            return prepared
        return replace(prepared, first_token_by_unix_s=arrived_unix_s + self.live.objective_s(pool, tier))

    def _refuse(self, request_id: str, pool: str, tier: str, verdict: Verdict) -> None:
        self._observer.decision("overloaded", tier)
        estimate = verdict.estimate_s
        said = (
            "cannot estimate its wait yet"
            if estimate is None or math.isinf(estimate)
            else f"estimates {estimate:.1f} s"
        )
        logger.info("request %s refused: model %s %s to a first token, over %.1f s",
                    request_id, pool, said, verdict.budget_s)  # fmt: skip
        raise ResourceExhausted(
            f"model {pool} is overloaded: it {said} to a first token, over the {verdict.budget_s:.1f} s admission "
            f"allows this request (a share of its tier's time-to-first-token objective, or of the time left to its "
            f"deadline); retry after {verdict.retry_after_s:.1f} s",
            retry_after_s=verdict.retry_after_s,
        )
