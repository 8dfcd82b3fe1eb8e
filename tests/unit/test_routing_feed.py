"""The KV feed from a replica to its routers, without Ray: batches cut per publication, a
bounded ring, snapshots; a router applying each batch once and in order, rebuilding from a
snapshot or a reset when it cannot, and forgetting a replica's old epoch. Then the whole path
from a block manager to a routing decision."""

from __future__ import annotations

import random

from museserve.engine.block_manager import BlockManager
from museserve.engine.kv_events import KVEventLog
from museserve.engine.kv_tier_index import TierIndex
from museserve.messages import ReplicaLoad
from museserve.routing.choice import Reason
from museserve.routing.feed import KVFeed, pack, unpack
from museserve.routing.follower import FeedFollower
from museserve.routing.prefix_index import PrefixIndex
from museserve.routing.prefix_routing import PrefixRouting, RoutingSettings
from museserve.routing.publisher import KVFeedPublisher
from tests.support import prepared_request
from tests.unit.test_kv_tier_index import fill, make_seq, run_prompt

BS = 4


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def publisher(log: KVEventLog, held=lambda: [], *, batches: int = 3, snapshot_every: int = 4, clock=None):
    log.start()
    return KVFeedPublisher(log, held, event_batches=batches, snapshot_every=snapshot_every, clock=clock or Clock())


def test_hashes_pack_into_one_bytes_object_and_back() -> None:
    hashes = (bytes(range(16)), bytes(range(16, 32)))
    assert unpack(pack(hashes)) == hashes and unpack(b"") == ()


def test_each_publication_cuts_at_most_one_batch_into_a_bounded_ring() -> None:
    log = KVEventLog()
    pub = publisher(log, batches=3, snapshot_every=100)
    first = pub.publish()
    assert [(b.seq, b.reset) for b in first.batches] == [(1, True)]  # a new replica holds nothing
    assert pub.publish().batches == first.batches  # no events: no batch
    for i in range(4):
        log.stored(bytes([i]) * 16)
        feed = pub.publish()
    assert [b.seq for b in feed.batches] == [3, 4, 5] and feed.snapshot is None
    assert feed.epoch == first.epoch


def test_every_nth_publication_carries_the_held_set_as_of_its_last_batch() -> None:
    log = KVEventLog()
    held = [b"x" * 16, b"y" * 16]
    pub = publisher(log, lambda: held, snapshot_every=2)
    assert pub.publish().snapshot is None
    log.stored(b"y" * 16)
    feed = pub.publish()
    assert feed.snapshot is not None and feed.snapshot.seq == feed.batches[-1].seq == 2
    assert set(unpack(feed.snapshot.held)) == set(held)


def _feed(pub: KVFeedPublisher, log: KVEventLog, stored: list[bytes] = (), removed: list[bytes] = ()) -> KVFeed:
    for h in stored:
        log.stored(h)
    for h in removed:
        log.removed(h)
    return pub.publish()


def test_a_router_applies_each_batch_once_in_order_and_measures_its_age() -> None:
    clock, log, index = Clock(), KVEventLog(), PrefixIndex()
    pub, follower = publisher(log, clock=clock), FeedFollower(index, clock)
    a, b = b"a" * 16, b"b" * 16
    follower.follow("r1", _feed(pub, log, [a]))
    clock.now += 0.5
    applied = follower.follow("r1", _feed(pub, log, [b], [a]))
    assert applied.staleness_s == (0.0,)
    assert follower.follow("r1", pub.publish()).staleness_s == ()  # the same batches again: nothing
    assert index.held("r1") == {b}


def test_a_router_that_missed_batches_waits_for_a_snapshot_then_resumes() -> None:
    log, index = KVEventLog(), PrefixIndex()
    held: set[bytes] = set()
    pub = publisher(log, lambda: sorted(held), batches=2, snapshot_every=5)
    follower = FeedFollower(index)
    follower.follow("r1", pub.publish())  # seq 1, the reset
    for i in range(3):  # three batches this router never sees: more than the ring keeps
        held.add(bytes([i]) * 16)
        feed = _feed(pub, log, [bytes([i]) * 16])
    applied = follower.follow("r1", feed)
    assert index.num_held("r1") == 0 and not applied.resynced  # a hole: it knows nothing now
    feed = pub.publish()  # the 5th publication: a snapshot
    assert follower.follow("r1", feed).resynced and index.held("r1") == held
    follower.follow("r1", _feed(pub, log, [b"z" * 16]))
    assert index.held("r1") == held | {b"z" * 16}


def test_a_late_router_starts_from_a_reset_still_in_the_ring() -> None:
    log, index = KVEventLog(), PrefixIndex()
    pub = publisher(log, batches=4, snapshot_every=100)
    pub.publish()
    feed = _feed(pub, log, [b"a" * 16])
    follower = FeedFollower(index)
    assert follower.follow("r1", feed).resynced and index.held("r1") == {b"a" * 16}


def test_a_new_epoch_forgets_what_the_old_replica_held() -> None:
    index = PrefixIndex()
    follower = FeedFollower(index)
    old_log, new_log = KVEventLog(), KVEventLog()
    old = publisher(old_log)
    follower.follow("r1", _feed(old, old_log, [b"a" * 16]))
    new = publisher(new_log)  # a restarted engine under the same replica id
    follower.follow("r1", _feed(new, new_log, [b"b" * 16]))
    assert index.held("r1") == {b"b" * 16}
    follower.forget("r1")
    assert index.num_blocks == 0


def test_the_router_view_equals_what_the_block_manager_holds_after_random_traffic() -> None:
    rng = random.Random(7)
    bm = BlockManager(12, BS, tier=TierIndex(6))
    pub = publisher(bm.kv_events, bm.held_hashes, batches=2, snapshot_every=5)
    index = PrefixIndex()
    follower = FeedFollower(index)
    for step in range(60):
        seq = make_seq([rng.randrange(6) for _ in range(rng.randrange(4, 17))], salt=rng.choice("ab"))
        run_prompt(bm, seq)
        bm.free(seq)
        if rng.random() < 0.3:
            bm.free(fill(bm, rng.randrange(1, 8)))
        bm.take_transfers()
        feed = pub.publish()
        if rng.random() < 0.7:  # this router misses some publications
            follower.follow("r1", feed)
            if step % 5 == 4:  # a snapshot publication: in sync, whatever it missed
                assert index.held("r1") == set(bm.held_hashes())
    follower.follow("r1", pub.publish())
    assert index.held("r1") == set(bm.held_hashes()) or index.num_held("r1") == 0


def test_a_decision_routes_to_the_holder_and_values_the_hit() -> None:
    settings = RoutingSettings(block_size=BS, min_hit_tokens=8, max_load_gap=2, kv_saturation=0.9)
    routing = PrefixRouting(settings)
    bm = BlockManager(32, BS)
    pub = publisher(bm.kv_events, bm.held_hashes)
    run_prompt(bm, make_seq(range(24), salt="acme"))
    routing.observe("a", pub.publish())
    routing.observe_load("a", ReplicaLoad(running=1))
    request = prepared_request("r", list(range(30)), tenant="acme")
    decision = routing.decide(request, {"a": 1, "b": 0, "c": 0})
    assert (decision.choice.replica, decision.choice.reason, decision.prompt_blocks) == ("a", Reason.PREFIX_HIT, 7)
    assert decision.held_by("a") == 6 and decision.random_held == 2.0
    assert routing.decide(request, {"a": 3, "b": 0}).choice.reason is Reason.LOAD_FALLBACK  # beyond the gap
    routing.observe_load("a", ReplicaLoad(running=4, waiting=2, kv_usage=0.95))
    assert routing.decide(request, {"a": 0, "b": 0}).choice.reason is Reason.LOAD_FALLBACK  # its KV is full
    routing.keep_only({"b"})
    assert routing.decide(request, {"b": 0}).choice.reason is Reason.NO_HIT
