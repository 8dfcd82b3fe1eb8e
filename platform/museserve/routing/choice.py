"""The routing decision: the replica holding the longest prefix of the prompt, unless it is
too busy next to the others; otherwise none, and the caller falls back to power-of-two."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    PREFIX_HIT = "prefix_hit"  # sent where its prefix is held
    LOAD_FALLBACK = "load_fallback"  # a replica held it, but each such one was too busy
    NO_HIT = "no_hit"  # no replica holds enough of it


@dataclass(frozen=True, slots=True)
class RoutingChoice:
    replica: str | None  # None: fall back to the default choice
    reason: Reason
    matched_blocks: int  # of the prompt's leading blocks, held by the best holder


def choose(
    matched: Mapping[str, int],
    loads: Mapping[str, int],
    *,
    min_hit_blocks: int,
    max_load_gap: int,
    saturated: Collection[str] = (),
) -> RoutingChoice:
    """`loads`: requests in flight per eligible replica (only these may be chosen); `matched`:
    leading blocks each replica holds (`PrefixIndex.matched_blocks`). The holder of the most
    blocks (at least `min_hit_blocks`) wins if its load is within `max_load_gap` of the least
    loaded eligible replica's, and it is not `saturated` (its KV cache full, requests waiting);
    else the next such holder. So one hot prefix can pull at most `max_load_gap` more requests
    onto its replica than the idlest one carries."""
    if not loads:
        return RoutingChoice(None, Reason.NO_HIT, 0)
    least = min(loads.values())
    holders = [(n, r) for r, n in matched.items() if r in loads and n >= min_hit_blocks]
    if not holders:
        return RoutingChoice(None, Reason.NO_HIT, 0)
    holders.sort(key=lambda hit: (-hit[0], loads[hit[1]], hit[1]))
    for num_blocks, replica in holders:
        if loads[replica] - least <= max_load_gap and replica not in saturated:
            return RoutingChoice(replica, Reason.PREFIX_HIT, num_blocks)
    return RoutingChoice(None, Reason.LOAD_FALLBACK, holders[0][0])
