"""Who is calling: an API key (from metadata) -> tenant and tier, plus the user id.

Keys are never stored or logged in the clear: config holds their SHA-256, and Redis holds
`{prefix}:apikey:<sha256>` hashes with `tenant` and `tier` fields (managed by the account
system, read here). A key found in Redis is trusted for `api_key_cache_s`, so a decision
costs no Redis call for identity; an unknown key is remembered briefly too, so a flood of
bad keys cannot turn into a flood of lookups.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from museserve.config import GatewayConfig
from museserve.domain import Identity
from museserve.errors import InvalidArgument, Unauthenticated, Unavailable
from museserve.gateway.redis_client import AnyRedis

logger = logging.getLogger(__name__)

MAX_USER_ID_CHARS = 256
UNKNOWN_KEY_CACHE_S = 5.0
MAX_CACHED_KEYS = 100_000

# sha256 hex -> (tenant, tier), or None when the store does not know the key.
KeyLookup = Callable[[str], Awaitable[tuple[str, str] | None]]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a caller presented, as read from request metadata by the API edge."""

    api_key: str = ""
    user: str = ""


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class Authenticator:
    def __init__(
        self, config: GatewayConfig, lookup: KeyLookup | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self._auth = config.auth
        self._known = {k.sha256: (k.tenant, k.tier) for k in config.api_keys}
        self._lookup = lookup
        self._cache_s = config.redis.api_key_cache_s
        self._cache: dict[str, tuple[float, tuple[str, str] | None]] = {}  # digest -> (expiry, answer)
        self._clock = clock

    @property
    def required(self) -> bool:
        return self._auth != "none"

    async def identify(self, credentials: Credentials) -> Identity:
        if len(credentials.user) > MAX_USER_ID_CHARS:
            raise InvalidArgument(f"at most {MAX_USER_ID_CHARS} characters", field="metadata.x-user-id")
        if self._auth == "none":
            return Identity(tenant="anonymous", user=credentials.user, tier="default")
        if not credentials.api_key:
            raise Unauthenticated(
                "an API key is required: send metadata 'authorization: Bearer <key>'", field="metadata.authorization"
            )
        account = await self._account(key_digest(credentials.api_key))
        if account is None:
            raise Unauthenticated("the API key is not valid", field="metadata.authorization")
        tenant, tier = account
        return Identity(tenant=tenant, user=credentials.user, tier=tier)

    async def _account(self, digest: str) -> tuple[str, str] | None:
        if digest in self._known:
            return self._known[digest]
        if self._lookup is None:
            return None
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answer = await self._lookup(digest)
        except Exception as e:
            if cached is not None:  # a stale answer beats refusing a known caller during an outage
                return cached[1]
            logger.warning("API key lookup failed: %s", type(e).__name__)
            raise Unavailable("cannot check the API key right now", retry_after_s=1.0) from None
        if len(self._cache) >= MAX_CACHED_KEYS:
            self._cache = {d: entry for d, entry in self._cache.items() if entry[0] > now}
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
        ttl = self._cache_s if answer is not None else min(self._cache_s, UNKNOWN_KEY_CACHE_S)
        self._cache[digest] = (now + ttl, answer)
        return answer


def redis_key_lookup(client: AnyRedis, key_prefix: str) -> KeyLookup:
    """Looks a key digest up in Redis: `HGETALL {prefix}:apikey:<sha256>` -> tenant, tier.
    One key per call, so a cluster client sends it to the key's own slot."""

    async def lookup(digest: str) -> tuple[str, str] | None:
        fields = await client.hgetall(f"{key_prefix}:apikey:{digest}")
        if not fields:
            return None
        decoded = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        if not decoded.get("tenant"):
            return None
        return decoded["tenant"], decoded.get("tier") or "default"

    return lookup
