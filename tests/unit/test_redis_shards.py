"""Sharded Redis without a server: cluster URLs, mirror stream groups, and a rate limiter
whose backend is down for one shard only (the others keep deciding)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from museserve.config.gateway import GatewayConfig, RateSpec, RedisConfig, TierConfig
from museserve.domain import Identity
from museserve.errors import ResourceExhausted, Unavailable
from museserve.gateway.mirror_sinks import group_streams
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import Charge, Decision, LocalRateLimiter, RateLimiterUnavailable
from museserve.gateway.redis_client import _cluster_kwargs, build_client, group_of, is_cluster_url, shard_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ShardedLimiter:
    """A limiter over two shards by tenant name; shard "b" (tenants starting with b) is down."""

    def __init__(self) -> None:
        self.inner = LocalRateLimiter()
        self.calls: dict[str, int] = {"a": 0, "b": 0}

    def shard(self, charges: Sequence[Charge]) -> str:
        return "b" if charges[0].limit.key.startswith("{b") else "a"

    async def acquire(self, charges: Sequence[Charge]) -> Decision:
        shard = self.shard(charges)
        self.calls[shard] += 1
        if shard == "b":
            raise RateLimiterUnavailable("redis: ConnectionError: refused")
        return await self.inner.acquire(charges)

    async def settle(self, charges: Sequence[Charge]) -> None:
        await self.inner.settle(charges)

    async def close(self) -> None:
        pass


def guard(on_unavailable: str, clock: Clock) -> tuple[QuotaGuard, ShardedLimiter]:
    tier = TierConfig(tenant=RateSpec(requests_per_minute=1, request_burst=2))
    config = GatewayConfig(tiers={"default": tier}, redis=RedisConfig(on_unavailable=on_unavailable))
    limiter = ShardedLimiter()
    quota = QuotaGuard(config, limiter=limiter, fallback=LocalRateLimiter(clock), clock=clock, settle_delay_s=0)
    return quota, limiter


def who(tenant: str) -> Identity:
    return Identity(tenant=tenant, user="", tier="default")


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_a_down_shard_sends_only_its_accounts_to_the_policy(policy: str) -> None:
    clock = Clock()
    quota, limiter = guard(policy, clock)
    for _ in range(2):  # the fallback's burst
        if policy == "fail_open":
            await quota.admit(who("bravo"), 1)
        else:
            with pytest.raises(Unavailable):
                await quota.admit(who("bravo"), 1)
    assert limiter.calls["b"] == 1  # the failed shard is not asked again within the retry window
    await quota.admit(who("alpha"), 1)  # the healthy shard decides as usual, in the same window
    await quota.admit(who("alpha"), 1)
    with pytest.raises(ResourceExhausted):
        await quota.admit(who("alpha"), 1)
    assert limiter.calls["a"] == 3
    clock.now += 1.0
    with pytest.raises((Unavailable, ResourceExhausted)):  # fail_open: the fallback's burst is spent
        await quota.admit(who("bravo"), 1)
    assert limiter.calls["b"] == 2  # retried once the window is over


def test_cluster_urls_name_startup_nodes_and_credentials() -> None:
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("rediss+cluster://h:1")
    assert not is_cluster_url("redis://h:6379/0")
    kw = _cluster_kwargs("rediss+cluster://me:s%40cret@10.0.0.1:7000,10.0.0.2,redis-2:7002")
    assert kw["nodes"] == [("10.0.0.1", 7000), ("10.0.0.2", 6379), ("redis-2", 7002)]
    assert (kw["username"], kw["password"], kw["ssl"]) == ("me", "s@cret", True)
    with pytest.raises(ValueError):
        _cluster_kwargs("redis+cluster://")


async def test_clients_by_scheme_and_shards() -> None:
    single = build_client("redis://127.0.0.1:1/0", timeout_s=0.1)
    cluster = build_client("redis+cluster://127.0.0.1:1", timeout_s=0.1)
    assert type(single).__name__ == "Redis" and type(cluster).__name__ == "RedisCluster"
    assert shard_of(single, "{acme}:x") == ""
    assert shard_of(cluster, "{acme}:x") == shard_of(cluster, "other:{acme}") != shard_of(cluster, "{globex}:x")
    await single.aclose()


def test_mirror_groups_are_stable_and_spread() -> None:
    assert group_streams("p:mirror", 1) == ["p:mirror"]
    assert group_streams("p:mirror", 3) == ["p:mirror:{g0}", "p:mirror:{g1}", "p:mirror:{g2}"]
    groups = [group_of(f"req-{i}", 8) for i in range(400)]
    assert groups == [group_of(f"req-{i}", 8) for i in range(400)]
    assert set(groups) == set(range(8))
