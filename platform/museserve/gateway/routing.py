"""Which pool serves a request: the named model, else the mode's route; the LoRA adapter it
runs with there (`adapters`); then the A/B split; and whether a shadow copy goes to a mirror
candidate.

Both draws are deterministic hashes, so they need no state and agree across gateway
replicas: the A/B draw hashes the account (tenant and user), so a user stays on one
side; the mirror draw hashes the request id, so a retried request is mirrored or not
the same way each time.

An adapter is resolved on the routed pool, so its refusals do not depend on the A/B side. A
request with an adapter goes to the A/B candidate, or is mirrored to the mirror candidate, only
where that pool has the adapter too and the caller may use it there; else it stays on the
routed pool, or is not mirrored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from museserve.config import MirrorConfig, MuseServeConfig, PoolConfig
from museserve.domain import ChatRequest
from museserve.errors import FailedPrecondition, InvalidArgument
from museserve.gateway.adapters import AdapterAccess


@dataclass(frozen=True, slots=True)
class Route:
    pool: PoolConfig  # the pool that serves the request
    routed_pool: str  # the pool chosen before the A/B split
    mirror: MirrorConfig | None = None  # set when this request is sampled for mirroring
    adapter: str = ""  # the LoRA adapter it runs with, on `pool` and on the mirror candidate; "": none

    @property
    def is_candidate(self) -> bool:
        return self.pool.name != self.routed_pool


def unit_hash(*parts: str) -> float:
    """A uniform value in [0, 1) from the parts, stable across processes and hosts."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Router:
    def __init__(self, config: MuseServeConfig, adapters: AdapterAccess | None = None):
        self._config = config
        self._pools = {p.name: p for p in config.pools}
        self._adapters = adapters or AdapterAccess(config)

    def route(self, request: ChatRequest) -> Route:
        mode = request.mode.mode
        if mode in self._config.gateway.disabled_modes:
            raise FailedPrecondition(f"mode {mode} is disabled on this service", field="mode.mode")
        routed = self._named_pool(request.model) if request.model else self._mode_pool(request)
        adapter = self._adapters.resolve(request, routed.name)
        pool = self._ab_side(routed, request, adapter)
        mirror = routed.mirror if pool is routed else None
        if mirror is not None and not (
            mirror.fraction > 0 and unit_hash("mirror", request.request_id) < mirror.fraction
        ):
            mirror = None
        if mirror is not None and mode not in self._pools[mirror.candidate].modes:
            mirror = None
        if mirror is not None and adapter and not self._adapters.serves(mirror.candidate, adapter, request.identity):
            mirror = None
        return Route(pool, routed.name, mirror, adapter)

    def _named_pool(self, name: str) -> PoolConfig:
        pool = self._pools.get(name)
        if pool is None:
            known = ", ".join(self._pools)
            raise InvalidArgument(f"unknown model {name!r} (served: {known})", field="model")
        return pool

    def _mode_pool(self, request: ChatRequest) -> PoolConfig:
        name = self._config.gateway.routes.get(request.mode.mode)
        return self._pools[name] if name is not None else self._config.default_pool

    def _ab_side(self, routed: PoolConfig, request: ChatRequest, adapter: str) -> PoolConfig:
        split = routed.ab
        if split is None or split.share <= 0:
            return routed
        candidate = self._pools[split.candidate]
        if request.mode.mode not in candidate.modes:
            return routed
        identity = request.identity
        account = (identity.tenant, identity.user or "")
        if unit_hash("ab", routed.name, *account) >= split.share:
            return routed
        if adapter and not self._adapters.serves(candidate.name, adapter, identity):
            return routed
        return candidate
