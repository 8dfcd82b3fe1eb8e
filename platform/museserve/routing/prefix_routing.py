"""Everything a pool router knows and decides, without Ray: the prefix index the replicas'
feeds keep, their last reported loads, and per request the choice with what it is worth."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from museserve.messages import PreparedRequest, ReplicaLoad
from museserve.routing.choice import RoutingChoice, choose
from museserve.routing.feed import KVFeed
from museserve.routing.follower import Applied, FeedFollower
from museserve.routing.prefix_index import PrefixIndex
from museserve.routing.prompt_blocks import prompt_block_hashes


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    block_size: int  # the pool's engine block size: hashes must cut the prompt where the engine does
    min_hit_tokens: int
    max_load_gap: int
    kv_saturation: float

    @property
    def min_hit_blocks(self) -> int:
        return -(-self.min_hit_tokens // self.block_size)


@dataclass(frozen=True, slots=True)
class Decision:
    choice: RoutingChoice
    prompt_blocks: int  # full blocks the prompt's prefix cache lookup can serve
    matched: Mapping[str, int]  # replica -> leading blocks it holds
    random_held: float  # leading blocks a uniformly random candidate holds, on average

    def held_by(self, replica: str) -> int:
        return self.matched.get(replica, 0)


class PrefixRouting:
    def __init__(self, settings: RoutingSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.index = PrefixIndex()
        self.follower = FeedFollower(self.index, clock)
        self.loads: dict[str, ReplicaLoad] = {}  # as each replica last published

    def observe(self, replica: str, feed: KVFeed) -> Applied:
        return self.follower.follow(replica, feed)

    def observe_load(self, replica: str, load: ReplicaLoad) -> None:
        self.loads[replica] = load

    def keep_only(self, replicas: set[str]) -> None:
        """Forgets replicas no longer running."""
        self.follower.forget_all_but(replicas)
        for replica in [r for r in self.loads if r not in replicas]:
            del self.loads[replica]

    def forget(self, replica: str) -> None:
        self.follower.forget(replica)
        self.loads.pop(replica, None)

    def decide(self, request: PreparedRequest, in_flight: Mapping[str, int]) -> Decision:
        """`in_flight`: requests in flight per candidate replica, as fresh as the caller has them."""
        settings = self.settings
        hashes = prompt_block_hashes(request, settings.block_size)
        matched = self.index.matched_blocks(hashes) if hashes else {}
        saturated = {
            replica
            for replica, load in self.loads.items()
            if load.waiting > 0 and load.kv_usage >= settings.kv_saturation
        }
        choice = choose(
            matched,
            in_flight,
            min_hit_blocks=settings.min_hit_blocks,
            max_load_gap=settings.max_load_gap,
            saturated=saturated,
        )
        random_held = sum(matched.get(r, 0) for r in in_flight) / len(in_flight) if in_flight else 0.0
        return Decision(choice, len(hashes), matched, random_held)
