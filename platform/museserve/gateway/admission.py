"""Bounded in-flight work per pool, per gateway replica, with room kept for higher tiers.

A pool admits at most `max_in_flight` requests through one gateway replica. A tier may
fill only its `admission_share` of that, so when a pool saturates the lower tiers are shed
first and the top tier keeps the rest. Over the bound a request is refused at once with
RESOURCE_EXHAUSTED: queueing it would only add latency to everyone behind it.

A replica that is stopping drains: from `start_draining()` on, every new request is refused
with UNAVAILABLE (another replica takes the retry) while the ones in flight finish.

The gateway runs on one event loop, so plain counters are exact.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from museserve.config import GatewayConfig, PoolConfig
from museserve.errors import ResourceExhausted, Unavailable

SHED_RETRY_AFTER_S = 0.5
DRAIN_POLL_S = 0.05


class AdmissionControl:
    def __init__(self, pools: Sequence[PoolConfig], gateway: GatewayConfig):
        self._limits = {p.name: p.max_in_flight for p in pools}
        self._in_flight = {p.name: 0 for p in pools}
        self._gateway = gateway
        self.draining = False

    def in_flight(self, pool: str) -> int:
        return self._in_flight[pool]

    @property
    def total_in_flight(self) -> int:
        return sum(self._in_flight.values())

    def start_draining(self) -> None:
        """From now on every new request is refused with UNAVAILABLE. Idempotent."""
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> int:
        """Waits until no request is in flight, at most `timeout_s`; returns how many still are."""
        deadline = time.monotonic() + timeout_s
        while self.total_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(min(DRAIN_POLL_S, max(0.0, deadline - time.monotonic())))
        return self.total_in_flight

    def allowance(self, pool: str, tier: str) -> int:
        """How many requests may be in flight in `pool` when one of `tier` arrives."""
        share = self._gateway.tier(tier).admission_share
        return max(1, math.floor(self._limits[pool] * share))

    def enter(self, pool: str, tier: str) -> Slot:
        """Takes one in-flight slot of `pool` (released when the `with` block ends), or
        sheds the request at once."""
        if self.draining:
            raise Unavailable("this gateway replica is shutting down; retry the request", retry_after_s=0.0)
        if self._in_flight[pool] >= self.allowance(pool, tier):
            raise ResourceExhausted(f"model {pool} is at capacity; retry shortly", retry_after_s=SHED_RETRY_AFTER_S)
        self._in_flight[pool] += 1
        return Slot(self._in_flight, pool)


class Slot:
    def __init__(self, counters: dict[str, int], pool: str):
        self._counters = counters
        self._pool = pool

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self._counters[self._pool] -= 1
