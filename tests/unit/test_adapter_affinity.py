"""Adapter affinity: a request for an adapter goes to a replica already holding it, the least
busy first, unless holding it would cost more than the load gap."""

from __future__ import annotations

from museserve.messages import ReplicaLoad
from museserve.routing.adapter_affinity import warm_replicas


def reports(**adapters: tuple[str, ...]) -> dict[str, ReplicaLoad]:
    return {replica: ReplicaLoad(adapters=held) for replica, held in adapters.items()}


def test_holders_of_the_adapter_are_chosen_least_busy_first() -> None:
    held = reports(r1=("health",), r2=("health", "shop"), r3=("shop",))
    assert warm_replicas("health", held, {"r1": 3, "r2": 1, "r3": 0}, max_load_gap=4) == ["r2", "r1"]
    assert warm_replicas("shop", held, {"r1": 0, "r2": 1, "r3": 1}, max_load_gap=4) == ["r2", "r3"]


def test_a_holder_too_busy_next_to_the_idlest_replica_is_passed_over() -> None:
    held = reports(r1=("health",), r2=())
    assert warm_replicas("health", held, {"r1": 9, "r2": 0}, max_load_gap=4) == []
    assert warm_replicas("health", held, {"r1": 4, "r2": 0}, max_load_gap=4) == ["r1"]


def test_no_holder_or_no_report_means_no_preference() -> None:
    assert warm_replicas("glasses", reports(r1=("health",)), {"r1": 0, "r2": 0}, max_load_gap=4) == []
    assert warm_replicas("health", {}, {"r1": 0}, max_load_gap=4) == []
    assert warm_replicas("health", reports(r1=("health",)), {}, max_load_gap=4) == []
    assert warm_replicas("health", reports(r1=("health",)), {"r2": 0}, max_load_gap=4) == []  # not eligible
