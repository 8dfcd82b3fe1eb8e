"""Rate limits as GCRA (the generic cell rate algorithm), and an in-process limiter.

A limit refills one unit per emission interval T = 60 / per_minute seconds and holds at
most `burst` units, so its tolerance is tau = burst * T. Its whole state is one number,
the theoretical arrival time (TAT). Charging n units: new_tat = max(tat, now) + n * T,
allowed iff new_tat - now <= tau. A decision covers several limits and is all-or-nothing.
A settlement charges unconditionally and may leave a limit in debt (TAT past now + tau).

The arithmetic here is shared by every backend: the Redis backend's script returns the
stored TATs and the server's clock, and `decide` turns them into the same `Decision`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Absorbs float rounding of clock values (epoch seconds in Redis round at ~2.4e-7 s).
EPSILON_S = 1e-6


class RateLimiterUnavailable(Exception):
    """The limiter's backend could not answer; the caller's policy decides what happens."""


@dataclass(frozen=True, slots=True)
class Limit:
    key: str
    per_minute: float
    burst: float

    @property
    def interval_s(self) -> float:
        return 60.0 / self.per_minute

    @property
    def tolerance_s(self) -> float:
        return self.burst * self.interval_s


@dataclass(frozen=True, slots=True)
class Charge:
    """`amount` is decided on; `debt` (settled usage, e.g. output tokens of finished
    streams) is applied first and unconditionally, even when the decision refuses."""

    limit: Limit
    amount: float
    debt: float = 0.0


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit after a decision: whole units left, seconds until fully refilled, and how
    long to wait before this limit alone would admit the charge (0 if it did)."""

    key: str
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0

    @property
    def refused(self) -> bool:
        return self.retry_after_s > 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed; else the longest wait among refused limits
    limits: tuple[LimitState, ...]

    @property
    def remaining(self) -> dict[str, int]:
        return {s.key: s.remaining for s in self.limits}


class RateLimiter(Protocol):
    async def acquire(self, charges: Sequence[Charge]) -> Decision: ...

    async def settle(self, charges: Sequence[Charge]) -> None: ...

    async def close(self) -> None: ...


def account_key(account: str, *parts: str) -> str:
    """A key whose Redis Cluster hash tag is the account, so every key of one account
    lands in one slot. An account that could break the tag (braces, empty) is hashed."""
    safe = account and "{" not in account and "}" not in account and not account.startswith("#")
    tag = account if safe else "#" + hashlib.blake2b(account.encode(), digest_size=16).hexdigest()
    return ":".join(("{" + tag + "}", *parts))


def check_distinct(charges: Sequence[Charge]) -> None:
    keys = [c.limit.key for c in charges]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a decision charges each limit at most once: {keys}")


def remaining_units(limit: Limit, tat: float, now: float) -> int:
    return max(0, math.floor((limit.tolerance_s - (max(tat, now) - now)) / limit.interval_s + EPSILON_S))


def decide(
    charges: Sequence[Charge], tats: Sequence[float | None], now: float, *, force: bool = False
) -> tuple[Decision, tuple[float | None, ...]]:
    """The decision for `charges` given each limit's stored TAT (None: never charged, or
    expired), and per limit the TAT to store (None: leave it). Debts are always stored;
    amounts only when the decision allows them or is forced."""
    starts = tuple(
        (now if tat is None else max(tat, now)) + c.debt * c.limit.interval_s
        for c, tat in zip(charges, tats, strict=True)
    )
    new_tats = tuple(start + c.amount * c.limit.interval_s for c, start in zip(charges, starts, strict=True))
    # A debt-only charge (amount 0) never refuses: the usage it records already happened.
    waits = tuple(
        max(0.0, new - now - c.limit.tolerance_s) if c.amount > 0 else 0.0
        for c, new in zip(charges, new_tats, strict=True)
    )
    allowed = force or all(w <= EPSILON_S for w in waits)
    after = new_tats if allowed else starts
    states = tuple(
        LimitState(
            key=c.limit.key,
            remaining=remaining_units(c.limit, tat, now),
            reset_s=tat - now,
            retry_after_s=0.0 if allowed or wait <= EPSILON_S else wait,
        )
        for c, tat, wait in zip(charges, after, waits, strict=True)
    )
    retry_after = 0.0 if allowed else max(waits)
    stores = tuple(
        tat if (c.amount > 0 and allowed) or c.debt > 0 else None for c, tat in zip(charges, after, strict=True)
    )
    return Decision(allowed, retry_after, states), stores


class LocalRateLimiter:
    """The limits of one process. Each call decides without awaiting, so decisions are
    atomic under asyncio concurrency and exact. Refilled entries are pruned as time passes
    so memory is bounded by the limits charged within about one refill period."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, prune_every: int = 1024):
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._prune_every = prune_every
        self._calls = 0

    def __len__(self) -> int:
        return len(self._tats)

    async def acquire(self, charges: Sequence[Charge]) -> Decision:
        return self._apply(charges, force=False)

    async def settle(self, charges: Sequence[Charge]) -> None:
        self._apply([c for c in charges if c.amount > 0 or c.debt > 0], force=True)

    async def close(self) -> None:
        self._tats.clear()

    def _apply(self, charges: Sequence[Charge], *, force: bool) -> Decision:
        check_distinct(charges)
        now = self._clock()
        self._calls += 1
        if self._calls % self._prune_every == 0:
            self.prune(now)
        decision, stores = decide(charges, [self._tats.get(c.limit.key) for c in charges], now, force=force)
        for charge, tat in zip(charges, stores, strict=True):
            if tat is not None:
                self._tats[charge.limit.key] = tat
        return decision

    def prune(self, now: float | None = None) -> int:
        """Drops limits that are full again (their TAT has passed); returns how many."""
        now = self._clock() if now is None else now
        stale = [key for key, tat in self._tats.items() if tat <= now]
        for key in stale:
            del self._tats[key]
        return len(stale)
