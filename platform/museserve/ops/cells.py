"""Cells: which cell serves a tenant, and where each cell's cluster is (docs/cells.md).

A cell is one Ray cluster with its own gateways and Redis Cluster. The global front door
sends each tenant to one cell by consistent hashing, so a tenant's conversations, rate
limits and prefix caches live in that cell. Each cell takes `VNODES` points on a ring of
64-bit hashes; a tenant belongs to the cell of the first point at or after its own hash.
Adding a cell moves only the tenants that now fall on its points (about 1/N of them);
removing one moves only its own tenants, each to the next cell on the ring
(`cells_in_order`: the order a tenant fails over in).

Hashes are BLAKE2b of the UTF-8 name, never Python's `hash` (salted per process): every
front-door replica and every tool must agree on the same tenant -> cell map.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

VNODES = 256  # points per cell: with 256, each cell's share is within ~10% of 1/N


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@lru_cache(maxsize=64)
def _ring(cells: tuple[str, ...], vnodes: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Sorted points and the cell of each; a point two cells share goes to the lesser name."""
    points = sorted((_hash(f"{cell}#{i}"), cell) for cell in set(cells) for i in range(vnodes))
    return tuple(p for p, _ in points), tuple(c for _, c in points)


def cells_in_order(tenant: str, cells: Iterable[str], vnodes: int = VNODES) -> list[str]:
    """The tenant's cell first, then the next distinct cells clockwise: its failover order."""
    names = tuple(sorted(set(cells)))
    if not names:
        raise ValueError("cells: no cell to assign a tenant to")
    points, owners = _ring(names, vnodes)
    start = bisect.bisect_left(points, _hash(tenant))
    order: list[str] = []
    for i in range(len(points)):
        cell = owners[(start + i) % len(points)]
        if cell not in order:
            order.append(cell)
            if len(order) == len(names):
                break
    return order


def cell_for(tenant: str, cells: Iterable[str], down: Iterable[str] = (), vnodes: int = VNODES) -> str:
    """The cell that serves `tenant`: its own, or while that is `down`, the next one up on the ring."""
    unavailable = set(down)
    for cell in cells_in_order(tenant, cells, vnodes):
        if cell not in unavailable:
            return cell
    raise ValueError("cells: every cell is down")


@dataclass(frozen=True)
class CellCluster:
    """Where `museserve ops --cell NAME` finds the cell's Kubernetes API; None: the default."""

    name: str
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None


def load_cells(path: Path | str) -> dict[str, CellCluster]:
    """A cells YAML: `cells: {NAME: {kubeconfig, context, namespace}}`; errors name the key."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    cells = doc.get("cells") if isinstance(doc, Mapping) else None
    if not isinstance(cells, Mapping) or not cells:
        raise ValueError(f"{path}: expected `cells:` mapping each cell name to its cluster")
    out = {}
    for name, entry in cells.items():
        entry = entry or {}
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: cells.{name}: expected a mapping (kubeconfig, context, namespace)")
        unknown = sorted(set(entry) - {"kubeconfig", "context", "namespace"})
        if unknown:
            raise ValueError(f"{path}: cells.{name}: unknown key {', '.join(unknown)} (kubeconfig, context, namespace)")
        out[str(name)] = CellCluster(str(name), entry.get("kubeconfig"), entry.get("context"), entry.get("namespace"))
    return out


def cell_cluster(path: Path | str, name: str) -> CellCluster:
    cells = load_cells(path)
    if name not in cells:
        raise ValueError(f"--cell {name}: not in {path} (cells: {', '.join(sorted(cells))})")
    return cells[name]


def shares(tenants: Sequence[str], cells: Iterable[str], vnodes: int = VNODES) -> dict[str, float]:
    """Each cell's share of `tenants`: how even the ring spreads them."""
    names = list(cells)
    counts = dict.fromkeys(names, 0)
    for tenant in tenants:
        counts[cell_for(tenant, names, vnodes=vnodes)] += 1
    return {cell: n / len(tenants) for cell, n in counts.items()}
