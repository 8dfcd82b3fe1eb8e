"""The gateway's rate-limit policy: what one request charges, and what a refusal says.

An admission charges 1 request and the prompt's tokens against the user's and the
tenant's limits of the caller's tier, all or nothing; the stream's end settles its output
tokens (reasoning and answer) unconditionally, so a long answer leaves the limits in debt.
With Redis the settlement waits in a ledger (`settlement.py`) and rides along with the
account's next decision, so a request costs one round trip, not two.
A caller with no user id is limited only as part of its tenant: per-user limits keep one
user from starving the others of the same tenant, and an unnamed caller is no such user.

Keys are per tenant (`account_key`), so one decision touches one Redis Cluster slot.
When Redis cannot answer, `redis.on_unavailable` picks: decide with this replica's own
limiter (fail_open) or refuse with UNAVAILABLE (fail_closed). After a failure Redis is
tried again only after `retry_backend_after_s`, so an outage costs no timeout per request.
That state is per shard (the limiter's `shard`: a cluster node, "" for a single node): a
Redis Cluster master that is down sends only the accounts whose slots it holds to the
policy, while every other account is decided in Redis as usual.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from museserve.config.gateway import GatewayConfig, RateSpec
from museserve.domain import Identity
from museserve.errors import ResourceExhausted, Unavailable
from museserve.gateway.ratelimit import (
    Charge,
    Decision,
    Limit,
    LocalRateLimiter,
    RateLimiter,
    RateLimiterUnavailable,
    account_key,
)
from museserve.gateway.redis_ratelimit import RedisRateLimiter
from museserve.gateway.settlement import DebtLedger, as_debts, with_debts

logger = logging.getLogger(__name__)

REQUESTS = "requests"
DEFERRED_SETTLE_S = 0.5
TOKENS = "tokens"


@dataclass(frozen=True, slots=True)
class Admission:
    """A request that passed; `metadata` is the remaining quota for the response."""

    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ScopedLimit:
    limit: Limit
    scope: str  # "tenant acme" or "user bob of tenant acme", for messages
    unit: str  # REQUESTS or TOKENS


def scoped_limits(config: GatewayConfig, identity: Identity) -> list[ScopedLimit]:
    """The limits that apply to a caller: only those its tier sets."""
    tier = config.tier(identity.tier)
    scopes: list[tuple[str, tuple[str, ...], RateSpec]] = [(f"tenant {identity.tenant}", ("tenant",), tier.tenant)]
    if identity.user:
        scopes.insert(0, (f"user {identity.user} of tenant {identity.tenant}", ("user", identity.user), tier.user))
    limits = []
    for scope, parts, spec in scopes:
        for unit, per_minute, burst in (
            (REQUESTS, spec.requests_per_minute, spec.request_burst),
            (TOKENS, spec.tokens_per_minute, spec.token_burst),
        ):
            if per_minute is not None:
                # An unset burst is one minute's worth, but at least one unit, so a slow limit still admits.
                limit = Limit(account_key(identity.tenant, *parts, unit), per_minute, burst or max(per_minute, 1.0))
                limits.append(ScopedLimit(limit, scope, unit))
    return limits


def quota_metadata(limits: Sequence[ScopedLimit], decision: Decision) -> tuple[tuple[str, str], ...]:
    """Per unit: the fewest whole units left over all scopes, and the seconds until every
    scope is full again. A unit with no limit is left out."""
    states = {s.key: s for s in decision.limits}
    metadata: list[tuple[str, str]] = []
    for unit in (REQUESTS, TOKENS):
        mine = [states[s.limit.key] for s in limits if s.unit == unit and s.limit.key in states]
        if mine:
            metadata.append((f"x-ratelimit-remaining-{unit}", str(min(s.remaining for s in mine))))
            metadata.append((f"x-ratelimit-reset-{unit}", f"{max(s.reset_s for s in mine):.3f}"))
    return tuple(metadata)


class QuotaGuard:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        limiter: RateLimiter | None = None,
        fallback: RateLimiter | None = None,
        retry_backend_after_s: float = 1.0,
        warn_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_backend_error: Callable[[], None] | None = None,
        settle_delay_s: float | None = None,
    ):
        self.config = config
        self._on_backend_error = on_backend_error  # e.g. a metric; called once per failed call
        redis = config.redis
        if limiter is None:
            limiter = RedisRateLimiter.from_config(redis) if redis.url is not None else LocalRateLimiter()
        self.limiter: RateLimiter = limiter
        self.fallback: RateLimiter = fallback if fallback is not None else LocalRateLimiter()
        self.fail_open = redis.on_unavailable == "fail_open"
        self._retry_backend_after_s = retry_backend_after_s
        self._warn_every_s = warn_every_s
        self._clock = clock
        self._down_until: dict[str, float] = {}  # shard -> when to try it again
        self._last_warning = -math.inf
        # Plain counters for the gateway's metrics.
        self.backend_errors = 0
        self.fallback_decisions = 0
        self.decisions_by_outcome: dict[str, int] = {"allowed": 0, "refused": 0, "unavailable": 0}
        # Output-token debts wait (at most this long) to ride along with the account's next
        # decision, so a request costs one round trip; an in-process limiter needs no wait.
        if settle_delay_s is None:
            settle_delay_s = DEFERRED_SETTLE_S if isinstance(limiter, RedisRateLimiter) else 0.0
        self._settle_delay_s = settle_delay_s
        self._ledger = DebtLedger(clock)
        self._flusher: asyncio.Task | None = None

    async def admit(self, identity: Identity, prompt_tokens: int, *, requests: int = 1) -> Admission:
        """`requests=0`: more prompt tokens of a request already admitted (a voice turn's speech
        as it arrives): only the token limits decide."""
        limits = [s for s in scoped_limits(self.config, identity) if requests or s.unit == TOKENS]
        if not limits:
            self.decisions_by_outcome["allowed"] += 1
            return Admission()
        for s in limits:
            if s.unit == TOKENS and prompt_tokens > s.limit.burst:
                self.decisions_by_outcome["refused"] += 1
                raise ResourceExhausted(
                    f"rate limit: a prompt of {prompt_tokens} tokens exceeds the {s.limit.burst:g}-token burst "
                    f"of {s.scope}; it cannot be admitted"
                )
        charges = [Charge(s.limit, requests if s.unit == REQUESTS else prompt_tokens) for s in limits]
        debts = self._ledger.take(identity.tenant)
        try:
            decision = await self._acquire(with_debts(charges, debts))
        except Unavailable:
            self._ledger.add(identity.tenant, as_debts(Charge(limit, units) for limit, units in debts.values()))
            raise
        metadata = quota_metadata(limits, decision)
        if decision.allowed:
            self.decisions_by_outcome["allowed"] += 1
            return Admission(metadata)
        self.decisions_by_outcome["refused"] += 1
        worst = max(decision.limits, key=lambda state: state.retry_after_s)
        binding = next(s for s in limits if s.limit.key == worst.key)
        raise ResourceExhausted(
            f"rate limit: {binding.scope} is over {binding.limit.per_minute:g} {binding.unit}/minute; "
            f"retry in {math.ceil(decision.retry_after_s * 10) / 10:.1f} s",
            retry_after_s=decision.retry_after_s,
            metadata=metadata,
        )

    async def settle(self, identity: Identity, output_tokens: int) -> None:
        """Charges a finished (or cancelled) stream's output tokens. Never raises."""
        if output_tokens <= 0:
            return
        charges = [Charge(s.limit, output_tokens) for s in scoped_limits(self.config, identity) if s.unit == TOKENS]
        if not charges:
            return
        if self._settle_delay_s > 0:
            self._ledger.add(identity.tenant, charges)
            self._start_flusher()
            return
        await self._settle_now(charges)

    async def _settle_now(self, charges: list[Charge]) -> None:
        try:
            shard = self._shard(charges)
            if self._backend_up(shard):
                try:
                    await self.limiter.settle(charges)
                    return
                except RateLimiterUnavailable as e:
                    self._backend_failed(e, shard)
            if self.fail_open:
                await self.fallback.settle(charges)
        except Exception:
            logger.exception("settling output tokens failed")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush(self._ledger.accounts())
        await self.limiter.close()
        await self.fallback.close()

    @property
    def pending_debts(self) -> int:
        """Accounts with output tokens not yet written to the limiter."""
        return len(self._ledger)

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while len(self._ledger):
            await asyncio.sleep(self._settle_delay_s)
            await self._flush(self._ledger.due(self._settle_delay_s))

    async def _flush(self, accounts: list[str]) -> None:
        """Writes the debts of accounts that had no decision to carry them."""
        for account in accounts:
            debts = self._ledger.take(account)
            await self._settle_now([Charge(limit, units) for limit, units in debts.values()])

    async def _acquire(self, charges: list[Charge]) -> Decision:
        shard = self._shard(charges)
        if self._backend_up(shard):
            try:
                decision = await self.limiter.acquire(charges)
                if self._down_until.pop(shard, None) is not None:
                    logger.info("rate limiter backend %s answers again", shard or "(single node)")
                return decision
            except RateLimiterUnavailable as e:
                self._backend_failed(e, shard)
        if not self.fail_open:
            self.decisions_by_outcome["unavailable"] += 1
            raise Unavailable("rate limiter unavailable; retry shortly", retry_after_s=self._retry_backend_after_s)
        self.fallback_decisions += 1
        return await self.fallback.acquire(charges)

    def _shard(self, charges: Sequence[Charge]) -> str:
        shard = getattr(self.limiter, "shard", None)
        return shard(charges) if shard is not None else ""

    def _backend_up(self, shard: str) -> bool:
        return self._clock() >= self._down_until.get(shard, -math.inf)

    def _backend_failed(self, error: RateLimiterUnavailable, shard: str) -> None:
        self.backend_errors += 1
        if self._on_backend_error is not None:
            self._on_backend_error()
        now = self._clock()
        self._down_until[shard] = now + self._retry_backend_after_s
        if now - self._last_warning >= self._warn_every_s:
            self._last_warning = now
            policy = "deciding with this replica's own limits" if self.fail_open else "refusing requests"
            logger.warning(
                "rate limiter backend unavailable (%s); %s (%d errors so far)", error, policy, self.backend_errors
            )
