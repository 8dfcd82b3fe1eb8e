"""The gateway's Redis state on a real three-master Redis Cluster: exact rate limits under
concurrency, API key lookup, stored conversations, mirror records over group streams, and
a lost master that sends only its own accounts to `on_unavailable`. No Ray."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from museserve.config.gateway import GatewayConfig, RateSpec, RedisConfig, TierConfig
from museserve.domain import Identity
from museserve.errors import ResourceExhausted, Unavailable
from museserve.gateway.conversations import RedisConversations
from museserve.gateway.identity import redis_key_lookup
from museserve.gateway.mirror_records import MirrorRecord, MirrorSide
from museserve.gateway.mirror_sinks import RedisMirrorSink, read_records
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import Charge, Limit, LocalRateLimiter, account_key
from museserve.gateway.redis_ratelimit import RedisRateLimiter, hash_tag
from tests.redis_cluster import NODE_TIMEOUT_MS, RedisClusterServers

pytestmark = pytest.mark.integration

PREFIX = "cl"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers() as servers:
        yield servers


def tenants_by_port(servers: RedisClusterServers, count: int = 60) -> dict[int, list[str]]:
    """Tenant names grouped by the master that holds their rate-limit slot."""
    found: dict[int, list[str]] = {}
    for i in range(count):
        tenant = f"t{i}-{uuid.uuid4().hex[:6]}"
        slot = key_slot(hash_tag(account_key(tenant)).encode())
        found.setdefault(servers.port_of_slot(slot), []).append(tenant)
    return found


async def test_concurrent_decisions_admit_exactly_the_burst(cluster: RedisClusterServers) -> None:
    limiter = RedisRateLimiter(cluster.url, timeout_ms=2000, key_prefix=PREFIX)
    try:
        for tenant in [names[0] for names in tenants_by_port(cluster).values()]:  # one per master
            user = Limit(account_key(tenant, "user", "bob", "requests"), per_minute=1, burst=500)
            whole = Limit(account_key(tenant, "tenant", "requests"), per_minute=1, burst=7)
            decisions = await asyncio.gather(*(limiter.acquire([Charge(user, 1), Charge(whole, 1)]) for _ in range(40)))
            assert sum(d.allowed for d in decisions) == 7, tenant
    finally:
        await limiter.close()


async def test_api_keys_and_conversations_on_every_master(cluster: RedisClusterServers) -> None:
    limiter = RedisRateLimiter(cluster.url, timeout_ms=2000, key_prefix=PREFIX)
    conversations = RedisConversations(cluster.url, timeout_s=2.0)
    try:
        lookup = redis_key_lookup(limiter.client, PREFIX)
        for i in range(12):  # digests spread over every master's slots
            digest = f"{i:064x}"
            await limiter.client.hset(f"{PREFIX}:apikey:{digest}", mapping={"tenant": f"t{i}", "tier": "pro"})
            assert await lookup(digest) == (f"t{i}", "pro")
        assert await lookup("f" * 64) is None
        for tenant in ("acme", "globex", "initech", "umbrella"):
            key = f"{PREFIX}:resp:{{{tenant}}}:resp_{uuid.uuid4().hex}"
            await conversations.put(key, tenant.encode(), ttl_s=60)
            assert await conversations.get(key) == tenant.encode()
            assert await conversations.delete(key)
            assert await conversations.get(key) is None
    finally:
        await conversations.close()
        await limiter.close()


def record(i: int) -> MirrorRecord:
    primary = MirrorSide.from_answer("muse-small", f"answer {i}", latency_s=0.2, output_tokens=2)
    candidate = MirrorSide.from_answer("muse-next", f"answer {i}!", latency_s=0.3, output_tokens=3)
    return MirrorRecord(f"req-{i}", "acme", 1700000000.0 + i, "0" * 64, None, primary, candidate, "outputs")  # type: ignore[arg-type]


async def test_mirror_records_spread_over_group_streams_and_read_back(cluster: RedisClusterServers) -> None:
    sink = RedisMirrorSink(cluster.url, f"{PREFIX}:mirror", maxlen=1000, timeout_s=2.0, groups=4)
    records = [record(i) for i in range(40)]
    for r in records:
        await sink.write(r)
    assert (sink.written, sink.failed) == (40, 0)
    assert sink.streams == [f"{PREFIX}:mirror:{{g{k}}}" for k in range(4)]
    assert {sink.stream_of(r) for r in records} == set(sink.streams)
    assert len({cluster.port_of_slot(key_slot(s.encode())) for s in sink.streams}) > 1  # not one shard
    await sink.close()
    read = read_records(cluster.url, stream=f"{PREFIX}:mirror")
    assert sorted(read, key=lambda r: r.created_unix_s) == records
    assert len(read_records(cluster.url, stream=f"{PREFIX}:mirror", limit=5)) == 5


def quota_guard(url: str, on_unavailable: str) -> QuotaGuard:
    prefix = f"{PREFIX}-{on_unavailable}".replace("_", "-")  # each guard its own limits
    tier = TierConfig(tenant=RateSpec(requests_per_minute=1, request_burst=3))
    config = GatewayConfig(
        tiers={"default": tier}, redis=RedisConfig(url=url, key_prefix=prefix, on_unavailable=on_unavailable)
    )
    limiter = RedisRateLimiter(url, timeout_ms=300, key_prefix=prefix)
    return QuotaGuard(config, limiter=limiter, fallback=LocalRateLimiter(), settle_delay_s=0.0)


async def test_a_lost_master_applies_the_policy_to_its_accounts_only() -> None:
    with RedisClusterServers() as servers:
        by_port = tenants_by_port(servers)
        lost_port = servers.ports[0]
        lost, kept = by_port[lost_port][:2], [t for p, names in by_port.items() if p != lost_port for t in names[:2]]
        fail_open, fail_closed = quota_guard(servers.url, "fail_open"), quota_guard(servers.url, "fail_closed")
        try:
            for guard in (fail_open, fail_closed):
                for tenant in lost + kept:  # every master answers: slot map known, one request spent
                    await guard.admit(Identity(tenant=tenant, user="", tier="default"), 10)
            servers.kill(0)
            for tenant in lost:
                who = Identity(tenant=tenant, user="", tier="default")
                await fail_open.admit(who, 10)  # decided here, by this replica's own limiter
                with pytest.raises(Unavailable):
                    await fail_closed.admit(who, 10)
            assert fail_open.fallback_decisions == len(lost)
            assert fail_closed.decisions_by_outcome["unavailable"] == len(lost)
            for guard in (fail_open, fail_closed):
                for tenant in kept:  # two more admitted in Redis, then the burst of 3 is spent
                    who = Identity(tenant=tenant, user="", tier="default")
                    await guard.admit(who, 10)
                    await guard.admit(who, 10)
                    with pytest.raises(ResourceExhausted):
                        await guard.admit(who, 10)
            assert fail_open.fallback_decisions == len(lost)
            # Once the others have marked it failed, its slots are uncovered: the same split.
            await asyncio.sleep(NODE_TIMEOUT_MS / 1000 + 1.5)
            for tenant in lost:
                await fail_open.admit(Identity(tenant=tenant, user="", tier="default"), 10)
                with pytest.raises(Unavailable):
                    await fail_closed.admit(Identity(tenant=tenant, user="", tier="default"), 10)
            assert fail_open.fallback_decisions == 2 * len(lost)
            for guard in (fail_open, fail_closed):
                for tenant in kept:  # still refused: Redis decides, not a fresh local limiter
                    with pytest.raises(ResourceExhausted):
                        await guard.admit(Identity(tenant=tenant, user="", tier="default"), 10)
            assert fail_open.fallback_decisions == 2 * len(lost)
        finally:
            await fail_open.close()
            await fail_closed.close()
