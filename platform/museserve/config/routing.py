"""How the handles to a model pool pick a replica for each request."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from museserve.config.base import Section


class RoutingConfig(Section):
    policy: Literal["prefix", "power_of_two"] = Field(
        "prefix",
        description="prefix: send a request to the replica whose KV cache holds the longest prefix of its prompt "
        "(from the replicas' own KV events), unless that replica is too busy next to the others; otherwise, and "
        "for power_of_two, Ray Serve's default: the less busy of two replicas drawn at random.",
    )
    min_hit_tokens: int = Field(
        64,
        ge=1,
        description="A held prefix shorter than this (rounded up to whole blocks) is not worth routing for.",
    )
    max_load_gap: int = Field(
        8,
        ge=0,
        description="Requests in flight a prefix holder may carry beyond the least loaded replica and still be "
        "chosen: the balance threshold, so one hot prefix cannot melt one replica.",
    )
    kv_saturation: float = Field(
        0.95,
        gt=0,
        le=1,
        description="A holder whose KV cache is at least this full while requests wait for it is not chosen "
        "for its prefix.",
    )
    stats_period_s: float = Field(
        1.0,
        gt=0,
        description="How often each replica publishes its KV events and load (Ray Serve's routing stats, pulled "
        "by the controller and sent to every router): the bound on how stale a router's view is.",
    )
    event_batches: int = Field(
        8,
        ge=1,
        description="Batches of KV events a replica keeps in what it publishes, so a router that missed a few "
        "publications catches up without a snapshot.",
    )
    snapshot_every: int = Field(
        10,
        ge=1,
        description="Every this many publications also carry every hash the replica holds, from which a router "
        "that started late or lost the sequence rebuilds its view.",
    )
