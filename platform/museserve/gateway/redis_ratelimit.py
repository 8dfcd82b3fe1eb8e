"""GCRA limits shared by every gateway replica through Redis.

Each decision is one atomic round trip: a Lua script (EVALSHA, EVAL once the server has
lost its script cache) reads every limit's TAT, decides with the server's clock, and
stores all of them or none. The script returns the server's clock and the TATs it read;
`decide` turns those into the Decision with the same arithmetic as the local limiter.

Keys: `<prefix>:rl:{<tenant>}:...`. A decision charges the user's and the tenant's limits,
and both carry the tenant as their hash tag (`ratelimit.account_key`), so every decision is
one script on one Redis Cluster slot: no cross-slot script, no second round trip, and a
tenant's users are all decided where the tenant is. The price is that a tenant cannot be
spread over several shards, which its own tenant-wide limit would forbid anyway. TATs are stored as `%.17g` strings, which
round-trip doubles exactly, and expire once the limit is full again.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError, RedisError

from museserve.config.gateway import RedisConfig
from museserve.gateway.ratelimit import (
    EPSILON_S,
    Charge,
    Decision,
    RateLimiterUnavailable,
    check_distinct,
    decide,
)
from museserve.gateway.redis_client import AnyRedis, build_client, close_client, shard_of

# KEYS: one per limit. ARGV: force ('1' stores even when refused), expiry margin (ms),
# epsilon (s), then for each key: interval (s), tolerance (s), amount, debt. Debts are
# stored whatever the decision; amounts only when it allows them (or is forced). This is
# `ratelimit.decide`, step for step.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local margin_ms = tonumber(ARGV[2])
local eps = tonumber(ARGV[3])
local reply = {string.format('%.17g', now)}
local start, new = {}, {}
local ok = true
for i, key in ipairs(KEYS) do
  local raw = redis.call('GET', key)
  local j = 4 + 4 * (i - 1)
  local interval = tonumber(ARGV[j])
  start[i] = now
  reply[i + 1] = ''
  if raw then
    reply[i + 1] = raw
    start[i] = math.max(tonumber(raw), now)
  end
  start[i] = start[i] + tonumber(ARGV[j + 3]) * interval
  new[i] = start[i] + tonumber(ARGV[j + 2]) * interval
  if tonumber(ARGV[j + 2]) > 0 and new[i] - now - tonumber(ARGV[j + 1]) > eps then ok = false end
end
local allowed = ok or ARGV[1] == '1'
for i, key in ipairs(KEYS) do
  local j = 4 + 4 * (i - 1)
  local tat = nil
  if allowed and tonumber(ARGV[j + 2]) > 0 then tat = new[i]
  elseif tonumber(ARGV[j + 3]) > 0 then tat = start[i] end
  if tat then
    local ttl = math.ceil((tat - now) * 1000) + margin_ms
    redis.call('SET', key, string.format('%.17g', tat), 'PX', ttl)
  end
end
return reply
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty `{...}`, else the key."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


class RedisRateLimiter:
    def __init__(
        self,
        url: str,
        *,
        timeout_ms: float = 50.0,
        max_connections: int = 64,
        key_prefix: str = "museserve",
        expiry_margin_s: float = 1.0,
    ):
        self._timeout_s = timeout_ms / 1000.0
        self._prefix = f"{key_prefix}:rl:"
        self._margin_ms = str(round(expiry_margin_s * 1000))
        # A single node or a cluster, by the URL's scheme (see redis_client).
        self._redis = build_client(url, timeout_s=self._timeout_s, max_connections=max_connections)

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisRateLimiter:
        if config.url is None:
            raise ValueError("redis.url is not set")
        return cls(
            config.url,
            timeout_ms=config.timeout_ms,
            max_connections=config.max_connections,
            key_prefix=config.key_prefix,
        )

    @property
    def client(self) -> AnyRedis:
        """The client and its bounded pool, for other gateway state kept in the same Redis."""
        return self._redis

    def redis_key(self, limit_key: str) -> str:
        return self._prefix + limit_key

    def shard(self, charges: Sequence[Charge]) -> str:
        """The server that decides `charges` ("" on a single node): an outage is tracked per shard."""
        return shard_of(self._redis, self.redis_key(charges[0].limit.key)) if charges else ""

    async def acquire(self, charges: Sequence[Charge]) -> Decision:
        return await self._run(charges, force=False)

    async def settle(self, charges: Sequence[Charge]) -> None:
        charges = [c for c in charges if c.amount > 0 or c.debt > 0]
        if charges:
            await self._run(charges, force=True)

    async def close(self) -> None:
        await close_client(self._redis)

    async def _run(self, charges: Sequence[Charge], *, force: bool) -> Decision:
        check_distinct(charges)
        if not charges:
            return Decision(True, 0.0, ())
        keys = [self.redis_key(c.limit.key) for c in charges]
        if len({hash_tag(k) for k in keys}) > 1:
            raise ValueError("all limits of one decision must share an account (see ratelimit.account_key)")
        args = ["1" if force else "0", self._margin_ms, repr(EPSILON_S)]
        for c in charges:
            args += [repr(c.limit.interval_s), repr(c.limit.tolerance_s), repr(float(c.amount)), repr(float(c.debt))]
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await self._eval(keys, args)
        except (RedisError, OSError, TimeoutError) as e:
            raise RateLimiterUnavailable(f"redis: {type(e).__name__}: {e}") from e
        now = float(reply[0])
        tats = [float(raw) if raw else None for raw in reply[1:]]
        return decide(charges, tats, now, force=force)[0]

    async def _eval(self, keys: list[str], args: list[str]) -> list[bytes]:
        try:
            return await self._redis.evalsha(SCRIPT_SHA, len(keys), *keys, *args)
        except NoScriptError:  # a new or restarted server: EVAL runs it and caches it again
            return await self._redis.eval(SCRIPT, len(keys), *keys, *args)
