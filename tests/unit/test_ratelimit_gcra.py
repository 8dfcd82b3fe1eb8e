"""GCRA arithmetic and the in-process limiter, on an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from museserve.gateway.ratelimit import Charge, Limit, LocalRateLimiter, account_key, decide
from museserve.gateway.redis_ratelimit import hash_tag


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_limit_interval_and_tolerance() -> None:
    limit = Limit("k", per_minute=40, burst=3)
    assert limit.interval_s == 1.5
    assert limit.tolerance_s == 4.5


def test_decide_fresh_limit_and_stored_tats() -> None:
    limit = Limit("k", per_minute=60, burst=5)
    decision, stored = decide([Charge(limit, 2)], [None], now=100.0)
    assert decision.allowed and decision.retry_after_s == 0.0
    assert stored == (102.0,)
    assert decision.remaining == {"k": 3}
    assert decision.limits[0].reset_s == 2.0
    # A TAT in the past counts as a full limit.
    assert decide([Charge(limit, 2)], [50.0], now=100.0)[1] == (102.0,)


async def test_burst_then_exact_retry_after() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    charge = Charge(Limit("k", per_minute=60, burst=5), 1)
    remaining = [(await limiter.acquire([charge])).remaining["k"] for _ in range(5)]
    assert remaining == [4, 3, 2, 1, 0]
    refused = await limiter.acquire([charge])
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(1.0)
    assert refused.limits[0].refused and refused.remaining["k"] == 0
    clock.now += 0.4
    assert (await limiter.acquire([charge])).retry_after_s == pytest.approx(0.6)


async def test_refill_admits_again_at_the_rate() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    charge = Charge(Limit("k", per_minute=40, burst=2), 1)  # T = 1.5 s
    assert (await limiter.acquire([charge])).allowed
    assert (await limiter.acquire([charge])).allowed
    assert (await limiter.acquire([charge])).retry_after_s == pytest.approx(1.5)
    clock.now += 1.5
    decision = await limiter.acquire([charge])
    assert decision.allowed and decision.remaining["k"] == 0
    clock.now += 1.4  # not quite one interval: nothing back yet
    assert (await limiter.acquire([])).allowed
    assert (await limiter.acquire([Charge(charge.limit, 0)])).remaining["k"] == 0
    clock.now += 0.1
    assert (await limiter.acquire([Charge(charge.limit, 0)])).remaining["k"] == 1


async def test_settle_drives_into_debt() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    tokens = Limit("t", per_minute=600, burst=100)  # T = 0.1 s, tau = 10 s
    assert (await limiter.acquire([Charge(tokens, 50)])).remaining["t"] == 50
    await limiter.settle([Charge(tokens, 200)])  # TAT now + 25 s: 15 s past tau
    refused = await limiter.acquire([Charge(tokens, 1)])
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(15.1)
    assert refused.remaining["t"] == 0 and refused.limits[0].reset_s == pytest.approx(25.0)
    clock.now += 15.1
    assert (await limiter.acquire([Charge(tokens, 1)])).allowed


async def test_zero_settlement_is_a_no_op() -> None:
    limiter = LocalRateLimiter(Clock())
    await limiter.settle([Charge(Limit("t", 60, 10), 0)])
    assert len(limiter) == 0


async def test_all_or_nothing_over_several_limits() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock)
    user, tenant = Limit("user", 60, 1), Limit("tenant", 60, 10)
    first = await limiter.acquire([Charge(user, 1), Charge(tenant, 1)])
    assert first.remaining == {"user": 0, "tenant": 9}
    second = await limiter.acquire([Charge(user, 1), Charge(tenant, 1)])
    assert not second.allowed and second.retry_after_s == pytest.approx(1.0)
    assert [s.refused for s in second.limits] == [True, False]
    assert second.remaining == {"user": 0, "tenant": 9}  # the tenant was not charged
    assert (await limiter.acquire([Charge(tenant, 0)])).remaining["tenant"] == 9


async def test_retry_after_is_the_longest_wait_of_refused_limits() -> None:
    limiter = LocalRateLimiter(Clock())
    a, b = Limit("a", 60, 1), Limit("b", 30, 1)  # T = 1 s and 2 s
    await limiter.acquire([Charge(a, 1), Charge(b, 1)])
    refused = await limiter.acquire([Charge(a, 1), Charge(b, 1)])
    assert refused.retry_after_s == pytest.approx(2.0)
    assert [s.retry_after_s for s in refused.limits] == pytest.approx([1.0, 2.0])


async def test_pruning_drops_refilled_limits() -> None:
    clock = Clock()
    limiter = LocalRateLimiter(clock, prune_every=4)
    for i in range(3):
        await limiter.acquire([Charge(Limit(f"k{i}", 60, 5), 2)])
    assert len(limiter) == 3
    clock.now += 2.0
    await limiter.acquire([Charge(Limit("fresh", 60, 5), 1)])  # 4th call sweeps
    assert len(limiter) == 1
    clock.now += 1.0
    assert limiter.prune() == 1 and len(limiter) == 0


async def test_exact_under_asyncio_concurrency() -> None:
    limiter = LocalRateLimiter(Clock())
    charge = Charge(Limit("k", per_minute=1, burst=50), 1)
    decisions = await asyncio.gather(*(limiter.acquire([charge]) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 50


async def test_a_decision_charges_each_limit_once() -> None:
    limit = Limit("k", 60, 5)
    with pytest.raises(ValueError, match="at most once"):
        await LocalRateLimiter(Clock()).acquire([Charge(limit, 1), Charge(limit, 1)])


def test_account_key_tags_one_account() -> None:
    assert account_key("acme", "user", "bob", "requests") == "{acme}:user:bob:requests"
    assert hash_tag("museserve:rl:" + account_key("acme", "tenant", "tokens")) == "acme"
    for unsafe in ("a{b", "a}b", "", "#x"):
        key = account_key(unsafe, "tenant", "requests")
        assert key.startswith("{#") and key.count("{") == 1 and key.count("}") == 1
        assert hash_tag(key) == hash_tag(account_key(unsafe, "user", "x}{", "tokens"))
    assert account_key("a{b", "x") != account_key("a}b", "x")


def test_a_debt_is_stored_even_when_the_decision_refuses_and_debt_alone_never_refuses() -> None:
    limit = Limit("k", per_minute=60, burst=5)
    other = Limit("o", per_minute=60, burst=5)
    decision, stored = decide([Charge(limit, 3, debt=4)], [None], now=100.0)
    assert not decision.allowed and decision.retry_after_s == pytest.approx(2.0)
    assert stored == (104.0,)  # the debt, without the refused amount
    decision, stored = decide([Charge(limit, 1), Charge(other, 0, debt=50)], [None, None], now=100.0)
    assert decision.allowed and stored == (101.0, 150.0)


def test_debt_ledger_merges_per_account_and_limit() -> None:
    from museserve.gateway.settlement import DebtLedger, with_debts

    clock = Clock()
    ledger = DebtLedger(clock)
    a, b = Limit("{t}:a", 60, 5), Limit("{t}:b", 60, 5)
    ledger.add("t", [Charge(a, 3), Charge(b, 2)])
    clock.now += 1
    ledger.add("t", [Charge(a, 4), Charge(a, 0)])
    assert ledger.due(2) == [] and ledger.due(1) == ["t"]
    merged = with_debts([Charge(a, 1)], ledger.take("t"))
    assert merged == [Charge(a, 1, debt=7), Charge(b, 0.0, 2)]
    assert len(ledger) == 0 and ledger.take("t") == {}
