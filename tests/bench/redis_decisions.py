"""Latency of one rate-limit decision in Redis: a single redis-server against a Redis
Cluster of three masters, both started here on loopback, both through `RedisRateLimiter`.

A decision is what the gateway's admission sends: one script charging a user's and its
tenant's request and token limits (four keys, one slot), set too high to ever refuse.
Decisions run `concurrency` at a time over `accounts` tenants (spread over every master
on the cluster); the p99 is over each decision's own wall time, after a warm-up that
loads the script and, on the cluster, the slot map.

    python -m tests.bench.redis_decisions
"""

from __future__ import annotations

import asyncio
import json
import time

from museserve.gateway.ratelimit import Charge, Limit, account_key
from museserve.gateway.redis_ratelimit import RedisRateLimiter
from tests.redis_cluster import RedisClusterServers
from tests.redis_server import RedisServer

DECISIONS = 4000
CONCURRENCY = 16
ACCOUNTS = 64
WARMUP = 200


def charges(tenant: str) -> list[Charge]:
    out = []
    for scope in (("user", "bench-user"), ("tenant",)):
        for unit, amount in (("requests", 1), ("tokens", 12)):
            out.append(Charge(Limit(account_key(tenant, *scope, unit), 1e9, 1e12), amount))
    return out


async def _measure(url: str, decisions: int) -> list[float]:
    limiter = RedisRateLimiter(url, timeout_ms=1000, max_connections=CONCURRENCY, key_prefix="bench")
    tenants = [f"tenant-{i}" for i in range(ACCOUNTS)]
    times: list[float] = []
    try:
        for i in range(WARMUP):
            await limiter.acquire(charges(tenants[i % ACCOUNTS]))

        async def worker(offset: int) -> None:
            for i in range(offset, decisions, CONCURRENCY):
                started = time.perf_counter()
                decision = await limiter.acquire(charges(tenants[i % ACCOUNTS]))
                times.append(time.perf_counter() - started)
                assert decision.allowed

        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    finally:
        await limiter.close()
    return times


def p99_ms(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def bench_decisions(decisions: int = DECISIONS) -> dict:
    """p50 and p99 of a decision on one redis-server and on a three-master cluster."""
    with RedisServer() as server:
        single = asyncio.run(_measure(server.url, decisions))
    with RedisClusterServers() as cluster:
        clustered = asyncio.run(_measure(cluster.url, decisions))
    return {
        "redis_decision_p50_ms": 1000 * sorted(single)[len(single) // 2],
        "redis_decision_p99_ms": p99_ms(single),
        "redis_cluster_decision_p50_ms": 1000 * sorted(clustered)[len(clustered) // 2],
        "redis_cluster_decision_p99_ms": p99_ms(clustered),
        "redis_decisions": {"decisions": decisions, "concurrency": CONCURRENCY, "accounts": ACCOUNTS},
    }


if __name__ == "__main__":
    print(json.dumps(bench_decisions(), indent=2))
