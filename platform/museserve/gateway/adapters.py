"""Which LoRA adapter a request runs with, and which adapters a caller may use.

A request names an adapter of the pool that serves it, or none; naming none, it gets its
caller's default for that pool (the tenant's `default_adapter`, else its tier's), else the base
model. Who may use which: the tenant's `adapters` allow-list, else its tier's (null: any adapter
of any pool); a caller's default is always usable. Entries are "POOL:ADAPTER": the same name on
another pool is another adapter.

Refusals come before any quota is charged: a name that cannot be an adapter's is
INVALID_ARGUMENT; one the caller may not use is PERMISSION_DENIED whether or not the pool has it
(a refusal never tells another tenant's adapters from absent ones); one the pool does not have
is NOT_FOUND.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from museserve.config import MuseServeConfig
from museserve.config.gateway import split_adapter_entry
from museserve.config.lora import ADAPTER_NAME
from museserve.domain import ChatRequest, Identity
from museserve.errors import InvalidArgument, NotFound, PermissionDenied
from museserve.lora.registry import AdapterRegistry

logger = logging.getLogger(__name__)

_NAME = re.compile(ADAPTER_NAME)
_SHOWN_CHARS = 80  # of a malformed name, in its refusal


@dataclass(frozen=True, slots=True)
class CallerAdapters:
    """One caller's (tenant and tier) adapter settings, the tenant's over the tier's."""

    allowed: frozenset[str] | None  # "POOL:ADAPTER" entries; None: any adapter of any pool
    default: str | None  # "POOL:ADAPTER"

    def default_for(self, pool: str) -> str:
        """The default adapter's name on `pool`; "" when the caller has none there."""
        if self.default is None:
            return ""
        default_pool, adapter = split_adapter_entry(self.default)
        return adapter if default_pool == pool else ""

    def may_use(self, pool: str, adapter: str) -> bool:
        if self.allowed is None or adapter == self.default_for(pool):
            return True
        return f"{pool}:{adapter}" in self.allowed


class AdapterAccess:
    def __init__(self, config: MuseServeConfig, registries: Mapping[str, AdapterRegistry] | None = None):
        """`registries`: each pool's adapters by name; default: read from each pool's `lora`."""
        self._gateway = config.gateway
        self._registries = registries or {pool.name: AdapterRegistry(pool.lora) for pool in config.pools}

    def caller(self, identity: Identity) -> CallerAdapters:
        tier = self._gateway.tier(identity.tier)
        allowed, default = tier.adapters, tier.default_adapter
        tenant = self._gateway.tenants.get(identity.tenant)
        if tenant is not None:
            allowed = tenant.adapters if tenant.adapters is not None else allowed
            default = tenant.default_adapter if tenant.default_adapter is not None else default
        return CallerAdapters(frozenset(allowed) if allowed is not None else None, default)

    def resolve(self, request: ChatRequest, pool: str) -> str:
        """The adapter `request` runs with on `pool` ("": the base model); refuses as the module says."""
        named = request.adapter
        if named and not _NAME.fullmatch(named):
            raise InvalidArgument(
                f"{named[:_SHOWN_CHARS]!r} is not an adapter name (letters, digits, '.', '_' and '-', "
                "at most 64, starting with a letter or digit)",
                field="adapter",
            )
        identity = request.identity
        caller = self.caller(identity)
        adapter = named or caller.default_for(pool)
        if not adapter:
            return ""
        whose = "" if named else f" (the default adapter of tenant {identity.tenant!r})"
        if not caller.may_use(pool, adapter):
            logger.info("request %s: tenant %s (tier %s) may not use adapter %s of %s",
                        request.request_id, identity.tenant, identity.tier, adapter, pool)  # fmt: skip
            raise PermissionDenied(
                f"tenant {identity.tenant!r} may not use adapter {adapter!r} of model {pool!r}", field="adapter"
            )
        if self._registries[pool].path(adapter) is None:
            raise NotFound(f"model {pool!r} has no adapter {adapter!r}{whose}", field="adapter")
        return adapter

    def serves(self, pool: str, adapter: str, identity: Identity) -> bool:
        """Whether `pool` has `adapter` and the caller may use it there: where an A/B side or a
        mirror copy may take a request that runs with it."""
        return self.caller(identity).may_use(pool, adapter) and self._registries[pool].path(adapter) is not None

    def usable(self, pool: str, identity: Identity) -> tuple[str, ...]:
        """The adapters of `pool` the caller may use, sorted (read now: a store's new ones included)."""
        caller = self.caller(identity)
        return tuple(name for name in self._registries[pool].names() if caller.may_use(pool, name))
