"""The rate-limit policy: charges from tiers, refusals clients can act on, and what
happens when the shared limiter cannot answer. Local limiters on an injected clock."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from museserve.config.gateway import GatewayConfig, RateSpec, RedisConfig, TierConfig
from museserve.domain import Identity
from museserve.errors import ResourceExhausted, Unavailable
from museserve.gateway.quota import QuotaGuard, scoped_limits
from museserve.gateway.ratelimit import Charge, Decision, LocalRateLimiter, RateLimiter, RateLimiterUnavailable
from museserve.gateway.redis_ratelimit import hash_tag

BOB = Identity(tenant="acme", user="bob", tier="pro")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class DownLimiter:
    """A shared limiter whose backend is down (or, with `error`, one that is broken)."""

    def __init__(self, error: Exception | None = None):
        self.error = error or RateLimiterUnavailable("redis: ConnectionError: refused")
        self.calls = 0

    async def acquire(self, charges: Sequence[Charge]) -> Decision:
        self.calls += 1
        raise self.error

    async def settle(self, charges: Sequence[Charge]) -> None:
        self.calls += 1
        raise self.error

    async def close(self) -> None:
        pass


def gateway_config(on_unavailable: str = "fail_open") -> GatewayConfig:
    pro = TierConfig(
        user=RateSpec(requests_per_minute=2, tokens_per_minute=600, token_burst=100),
        tenant=RateSpec(requests_per_minute=3, request_burst=3),
    )
    return GatewayConfig(tiers={"default": TierConfig(), "pro": pro}, redis=RedisConfig(on_unavailable=on_unavailable))


def guard(clock: Clock, *, limiter: RateLimiter | None = None, on_unavailable: str = "fail_open") -> QuotaGuard:
    return QuotaGuard(
        gateway_config(on_unavailable),
        limiter=limiter if limiter is not None else LocalRateLimiter(clock),
        fallback=LocalRateLimiter(clock),
        clock=clock,
    )


def test_limits_come_from_the_tier_and_share_the_tenant_tag() -> None:
    limits = scoped_limits(gateway_config(), BOB)
    assert [(s.scope, s.unit) for s in limits] == [
        ("user bob of tenant acme", "requests"),
        ("user bob of tenant acme", "tokens"),
        ("tenant acme", "requests"),
    ]
    assert [(s.limit.per_minute, s.limit.burst) for s in limits] == [(2, 2), (600, 100), (3, 3)]
    assert {hash_tag(s.limit.key) for s in limits} == {"acme"}
    # No user id: only the tenant's limits. Unknown tier: the default's (unlimited).
    assert [s.scope for s in scoped_limits(gateway_config(), Identity("acme", "", "pro"))] == ["tenant acme"]
    assert scoped_limits(gateway_config(), Identity("acme", "bob", "gone")) == []


async def test_admission_metadata_is_the_least_remaining_per_unit() -> None:
    admission = await guard(Clock()).admit(BOB, prompt_tokens=30)
    assert admission.metadata == (
        ("x-ratelimit-remaining-requests", "1"),  # user: 2 - 1; tenant: 3 - 1
        ("x-ratelimit-reset-requests", "30.000"),  # the user's, 1 request at 2/minute
        ("x-ratelimit-remaining-tokens", "70"),
        ("x-ratelimit-reset-tokens", "3.000"),
    )
    assert (await guard(Clock()).admit(Identity("acme", "", "default"), 10)).metadata == ()


async def test_refusal_names_the_scope_and_unit() -> None:
    clock = Clock()
    g = guard(clock)
    await g.admit(BOB, 1)
    await g.admit(Identity("acme", "carol", "pro"), 1)
    await g.admit(Identity("acme", "dave", "pro"), 1)
    with pytest.raises(ResourceExhausted) as refused:
        await g.admit(BOB, 1)
    error = refused.value
    assert error.message == "rate limit: tenant acme is over 3 requests/minute; retry in 20.0 s"
    assert error.retry_after_s == pytest.approx(20.0)
    assert ("x-ratelimit-remaining-requests", "0") in error.metadata
    assert g.decisions_by_outcome == {"allowed": 3, "refused": 1, "unavailable": 0}


async def test_output_tokens_settle_into_debt() -> None:
    clock = Clock()
    g = guard(clock)
    await g.admit(BOB, 50)
    await g.settle(BOB, 110)  # 160 tokens at 10/s: 6 s past the 100-token burst
    await g.settle(BOB, 0)
    with pytest.raises(ResourceExhausted, match="user bob of tenant acme is over 600 tokens/minute") as refused:
        await g.admit(BOB, 10)
    assert refused.value.retry_after_s == pytest.approx(7.0)
    assert ("x-ratelimit-remaining-tokens", "0") in refused.value.metadata


async def test_a_prompt_over_the_burst_can_never_pass() -> None:
    with pytest.raises(ResourceExhausted, match="prompt of 101 tokens exceeds the 100-token burst") as refused:
        await guard(Clock()).admit(BOB, 101)
    assert refused.value.retry_after_s is None


async def test_fail_open_decides_locally_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    down = DownLimiter()
    g = guard(clock, limiter=down)
    with caplog.at_level(logging.WARNING, logger="museserve.gateway.quota"):
        assert (await g.admit(BOB, 1)).metadata
        await g.settle(BOB, 10)  # into the fallback, while the backend is skipped
        await g.admit(BOB, 1)
        with pytest.raises(ResourceExhausted):  # the fallback enforces the same limits
            await g.admit(BOB, 1)
    assert down.calls == 1  # later calls skip the backend until retry_backend_after_s
    assert g.backend_errors == 1 and g.fallback_decisions == 3
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1
    clock.now += 1.0
    await g.admit(Identity("acme", "", "pro"), 1)
    assert down.calls == 2 and g.backend_errors == 2
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1  # rate-limited warning


async def test_fail_closed_refuses_with_unavailable() -> None:
    g = guard(Clock(), limiter=DownLimiter(), on_unavailable="fail_closed")
    with pytest.raises(Unavailable, match="rate limiter unavailable") as refused:
        await g.admit(BOB, 1)
    assert refused.value.retry_after_s == 1.0
    await g.settle(BOB, 10)  # logged, not raised
    assert g.decisions_by_outcome["unavailable"] == 1


async def test_the_backend_is_used_again_once_it_answers() -> None:
    clock = Clock()
    down = DownLimiter()
    g = guard(clock, limiter=down)
    await g.admit(BOB, 1)
    g.limiter = LocalRateLimiter(clock)  # the backend is back
    await g.admit(BOB, 1)
    assert g.fallback_decisions == 2
    clock.now += 1.0
    await g.admit(Identity("acme", "", "pro"), 1)
    assert g.fallback_decisions == 2


async def test_settlement_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    g = guard(Clock(), limiter=DownLimiter(RuntimeError("bug")))
    with caplog.at_level(logging.ERROR, logger="museserve.gateway.quota"):
        await g.settle(BOB, 10)
    assert "settling output tokens failed" in caplog.text


async def test_deferred_settlement_rides_with_the_next_decision() -> None:
    clock = Clock()
    shared = LocalRateLimiter(clock)
    g = QuotaGuard(gateway_config(), limiter=shared, fallback=LocalRateLimiter(clock), clock=clock, settle_delay_s=60)
    await g.admit(BOB, 50)
    await g.settle(BOB, 110)
    assert g.pending_debts == 1  # not written yet
    # The next decision carries the debt first: 50 + 110 tokens, past the burst, so the
    # 10-token prompt is refused exactly as if the debt had been written at once.
    with pytest.raises(ResourceExhausted) as refused:
        await g.admit(BOB, 10)
    assert refused.value.retry_after_s == pytest.approx(7.0)
    assert g.pending_debts == 0  # and the debt stays written although the decision refused
    with pytest.raises(ResourceExhausted):
        await g.admit(BOB, 10)


async def test_debts_of_idle_accounts_are_flushed_and_close_flushes_the_rest() -> None:
    import asyncio

    shared = LocalRateLimiter()
    g = QuotaGuard(gateway_config(), limiter=shared, fallback=LocalRateLimiter(), settle_delay_s=0.05)
    await g.settle(BOB, 30)
    assert g.pending_debts == 1
    for _ in range(100):
        if g.pending_debts == 0:
            break
        await asyncio.sleep(0.01)
    assert g.pending_debts == 0 and len(shared) == 1  # written by the flusher
    await g.settle(Identity(tenant="other", user="u", tier="pro"), 5)
    await g.close()
    assert g.pending_debts == 0


async def test_fail_closed_keeps_debts_for_later() -> None:
    clock = Clock()
    g = QuotaGuard(
        gateway_config("fail_closed"),
        limiter=DownLimiter(),
        fallback=LocalRateLimiter(clock),
        clock=clock,
        settle_delay_s=60,
    )
    await g.settle(BOB, 10)
    with pytest.raises(Unavailable):
        await g.admit(BOB, 1)
    assert g.pending_debts == 1
