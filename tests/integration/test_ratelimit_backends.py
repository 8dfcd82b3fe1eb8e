"""Both limiter backends under the same tests, the shared one on a real `redis-server`:
exact under concurrency, token debt, retry times, key layout and expiry, and outages.
No Ray: these tests request none of the app fixtures."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from redis.crc import key_slot

from museserve.config.gateway import GatewayConfig, RateSpec, RedisConfig, TierConfig
from museserve.domain import Identity
from museserve.errors import Unavailable
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import Charge, Limit, LocalRateLimiter, RateLimiter, account_key
from museserve.gateway.redis_ratelimit import RedisRateLimiter, hash_tag
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PREFIX = "rltest"
MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(params=["local", "redis"])
async def make_limiter(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[MakeLimiter]:
    made: list[RateLimiter] = []

    def make(**redis_options: float) -> RateLimiter:
        options = {"timeout_ms": 1000.0, "key_prefix": PREFIX, **redis_options}
        limiter = LocalRateLimiter() if request.param == "local" else RedisRateLimiter(redis_server.url, **options)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def fresh(unit: str, per_minute: float, burst: float, account: str = "") -> Limit:
    return Limit(account_key(account or uuid.uuid4().hex, "tenant", unit), per_minute, burst)


@pytest.mark.parametrize("max_connections", [4, 64])
async def test_exact_under_concurrency(make_limiter: MakeLimiter, max_connections: int) -> None:
    limiter = make_limiter(max_connections=max_connections)
    charge = Charge(fresh("requests", per_minute=1, burst=50), 1)
    decisions = await asyncio.gather(*(limiter.acquire([charge]) for _ in range(200)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 50
    assert sorted(d.remaining[charge.limit.key] for d in allowed) == list(range(50))
    assert all(55.0 <= d.retry_after_s <= 60.0 for d in decisions if not d.allowed)


async def test_tokens_settle_into_debt(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    tokens = fresh("tokens", per_minute=6000, burst=1000)  # 100 tokens/s, tau = 10 s
    assert (await limiter.acquire([Charge(tokens, 600)])).remaining[tokens.key] in (399, 400)
    await limiter.settle([Charge(tokens, 1000)])  # 16 s of tokens: 6 s of debt
    await limiter.settle([Charge(tokens, 0)])
    refused = await limiter.acquire([Charge(tokens, 100)])
    assert not refused.allowed and refused.remaining[tokens.key] == 0
    assert 6.8 <= refused.retry_after_s <= 7.0


async def test_retry_after_matches_the_arithmetic(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    account = uuid.uuid4().hex
    user, tenant = fresh("requests", 60, 2, account), fresh("tokens", 600, 100, account)
    for _ in range(2):
        assert (await limiter.acquire([Charge(user, 1), Charge(tenant, 10)])).allowed
    refused = await limiter.acquire([Charge(user, 1), Charge(tenant, 10)])
    assert not refused.allowed and 0.8 <= refused.retry_after_s <= 1.0
    assert refused.remaining[tenant.key] in (79, 80)  # all or nothing: not charged
    await asyncio.sleep(refused.retry_after_s + 0.01)
    assert (await limiter.acquire([Charge(user, 1), Charge(tenant, 10)])).allowed


async def test_zero_settlement_changes_nothing(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    limit = fresh("tokens", 60, 10)
    await limiter.settle([Charge(limit, 0)])
    assert (await limiter.acquire([Charge(limit, 0)])).remaining[limit.key] == 10


async def test_debts_are_written_with_the_decision_even_when_it_refuses(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter()
    account = uuid.uuid4().hex
    tokens, requests = fresh("tokens", 6000, 1000, account), fresh("requests", 60, 5, account)  # 100 tokens/s
    # 900 tokens of debt then a 200-token prompt: over the 1000-token burst, refused...
    refused = await limiter.acquire([Charge(tokens, 200, debt=900), Charge(requests, 1)])
    assert not refused.allowed and 0.9 <= refused.retry_after_s <= 1.0
    assert refused.remaining[requests.key] == 5  # all or nothing: no request charged
    # ...but the debt stays written, and a debt-only charge of another limit never refuses.
    assert (await limiter.acquire([Charge(tokens, 0)])).remaining[tokens.key] in (99, 100)
    other = fresh("tokens", 60, 5, account)
    assert (await limiter.acquire([Charge(requests, 1), Charge(other, 0, debt=50)])).allowed


def guard_config(redis: RedisConfig) -> GatewayConfig:
    spec = RateSpec(requests_per_minute=600, tokens_per_minute=60_000)
    return GatewayConfig(tiers={"default": TierConfig(user=spec, tenant=spec)}, redis=redis)


async def test_one_slot_and_one_evalsha_per_decision(redis_server: RedisServer) -> None:
    prefix = f"slot{uuid.uuid4().hex[:8]}"  # this test's keys only
    config = guard_config(RedisConfig(url=redis_server.url, timeout_ms=1000, key_prefix=prefix))
    guard = QuotaGuard(config)
    identity = Identity(tenant=f"a{{cme}}-{uuid.uuid4().hex}", user="b{o}b", tier="default")
    try:
        await guard.admit(identity, 10)  # loads the script
        redis_server.command("CONFIG", "RESETSTAT")
        for _ in range(5):
            await guard.admit(identity, 10)
        await guard.settle(identity, 20)  # waits to ride along with the next decision
        assert redis_server.command_calls("evalsha") == 5 and guard.pending_debts == 1
        await guard.admit(identity, 10)
        assert redis_server.command_calls("evalsha") == 6 and guard.pending_debts == 0
        assert redis_server.command_calls("eval") == 0
    finally:
        await guard.close()
    reply = redis_server.command("KEYS", f"{prefix}:rl:*").split(b"\r\n")
    mine = [k.decode() for k in reply if k.startswith(prefix.encode())]
    assert len(mine) == 4 and len({hash_tag(k) for k in mine}) == 1 and len({key_slot(k.encode()) for k in mine}) == 1
    assert any(":user:b{o}b:requests" in k for k in mine) and any(k.endswith(":tenant:tokens") for k in mine)


async def test_keys_expire_once_refilled(redis_server: RedisServer) -> None:
    limiter = RedisRateLimiter(redis_server.url, key_prefix=PREFIX, expiry_margin_s=0.05)
    limit = fresh("requests", per_minute=60_000, burst=10)  # refills in 1 ms per request
    try:
        await limiter.acquire([Charge(limit, 2)])
        key = limiter.redis_key(limit.key)
        assert 0 < int(redis_server.command("PTTL", key)[1:]) <= 53
        await asyncio.sleep(0.2)
        assert redis_server.command("EXISTS", key) == b":0\r\n"
    finally:
        await limiter.close()


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_outage_and_return(redis_server: RedisServer, policy: str) -> None:
    config = guard_config(RedisConfig(url=redis_server.url, timeout_ms=200, key_prefix=PREFIX, on_unavailable=policy))
    guard = QuotaGuard(config, retry_backend_after_s=0.1)
    identity = Identity(tenant=f"t-{uuid.uuid4().hex}", user="u", tier="default")
    tenant_key = f"{PREFIX}:rl:" + account_key(identity.tenant, "tenant", "requests")
    try:
        await guard.admit(identity, 10)
        redis_server.stop()
        # Liveness: with the server gone, a decision is bounded by the client's timeout, never a hang.
        if policy == "fail_open":
            assert (await bounded(guard.admit(identity, 10), 1.0)).metadata
            assert guard.fallback_decisions == 1
        else:
            with pytest.raises(Unavailable):
                await bounded(guard.admit(identity, 10), 1.0)
        await guard.settle(identity, 5)  # logged, never raised
        assert guard.backend_errors >= 1
    finally:
        if not redis_server.running:
            redis_server.start()
    try:
        await asyncio.sleep(0.15)
        await guard.admit(identity, 10)  # a restarted server: no script cached, no state
        assert redis_server.command("EXISTS", tenant_key) == b":1\r\n"
        assert guard.fallback_decisions == (1 if policy == "fail_open" else 0)
    finally:
        await guard.close()


async def bounded(call, timeout_s: float):
    """Awaits `call`, failing the test if it has not ended within `timeout_s`."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        pytest.fail(f"no answer within {timeout_s} s")
