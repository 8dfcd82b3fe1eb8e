"""The model replicas' latest load reports, as this process's pool routers received them.

Each replica reports a `ReplicaLoad` with its Serve routing stats; Serve's controller pushes
them, with the replica set, to every router of a handle to the pool, and each gateway replica
holds one such handle per pool. The router (`serve.prefix_router`) publishes what it received
here; the gateway's admission reads it. Every gateway replica thus decides on the same reports,
not on its own counts.

The router runs on its own event loop thread: a publication replaces a pool's whole mapping,
which readers take as one immutable value, so no lock is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from museserve.messages import ReplicaLoad

_EMPTY: Mapping[str, ReplicaLoad] = MappingProxyType({})


class PoolLoads:
    def __init__(self) -> None:
        self._pools: dict[str, Mapping[str, ReplicaLoad]] = {}

    def publish(self, pool: str, loads: Mapping[str, ReplicaLoad]) -> None:
        """`loads`: replica id -> its last report, for the replicas running now."""
        self._pools[pool] = MappingProxyType(dict(loads))

    def of(self, pool: str) -> Mapping[str, ReplicaLoad]:
        return self._pools.get(pool, _EMPTY)

    def clear(self) -> None:
        self._pools.clear()


# This process's board: written by the routers Serve builds inside it, read by its gateway.
POOL_LOADS = PoolLoads()
