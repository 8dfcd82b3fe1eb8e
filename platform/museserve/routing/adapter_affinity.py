"""Where a request for a LoRA adapter goes when no replica holds its prompt's prefix: to a
replica that already holds the adapter (so a cold load is the exception), unless every such
replica is too busy next to the idlest one."""

from __future__ import annotations

from collections.abc import Mapping

from museserve.messages import ReplicaLoad


def warm_replicas(
    adapter: str, reports: Mapping[str, ReplicaLoad], in_flight: Mapping[str, int], max_load_gap: int
) -> list[str]:
    """The replicas of `in_flight` (the eligible ones, with their requests in flight) whose latest
    report lists `adapter` as resident and whose load is within `max_load_gap` of the least
    loaded eligible replica's; sorted by load. Empty: let the default choice load it somewhere."""
    if not in_flight:
        return []
    least = min(in_flight.values())
    holders = [
        replica
        for replica, load in in_flight.items()
        if replica in reports and adapter in reports[replica].adapters and load - least <= max_load_gap
    ]
    return sorted(holders, key=lambda replica: (in_flight[replica], replica))
