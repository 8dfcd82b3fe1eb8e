"""A router's side of the feeds: applies each replica's batches to the prefix index in order,
once each, and rebuilds a replica's entry from a snapshot (or a reset batch) when it cannot
(a router that started late, publications it missed, a replica's new epoch).

A router that cannot resume a replica's sequence forgets what it knew of it: routing on a
view with a hole could send requests for a prefix the replica has long evicted. Until a
snapshot comes, that replica attracts no prefix; it still takes its share of the rest."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from museserve.engine.kv_events import KVEvents
from museserve.routing.feed import KVBatch, KVFeed, unpack
from museserve.routing.prefix_index import PrefixIndex


@dataclass(slots=True)
class _Cursor:
    epoch: str
    seq: int | None  # the last batch applied; None: out of sequence, waiting for a snapshot


@dataclass(frozen=True, slots=True)
class Applied:
    staleness_s: tuple[float, ...]  # per batch (or snapshot) applied: its age now
    resynced: bool  # the replica's entry was rebuilt from a snapshot or a reset batch


class FeedFollower:
    def __init__(self, index: PrefixIndex, clock: Callable[[], float] = time.time) -> None:
        self.index = index
        self._clock = clock
        self._cursors: dict[str, _Cursor] = {}

    def follow(self, replica: str, feed: KVFeed) -> Applied:
        cursor = self._cursors.get(replica)
        if cursor is None or cursor.epoch != feed.epoch:
            self.index.drop(replica)
            cursor = self._cursors[replica] = _Cursor(feed.epoch, None)
        now = self._clock()
        ages: list[float] = []
        resynced = False
        if cursor.seq is not None and feed.batches and feed.batches[0].seq > cursor.seq + 1:
            self.index.drop(replica)  # batches were missed: the view has a hole
            cursor.seq = None
        if cursor.seq is None:
            resynced = self._resync(replica, cursor, feed, ages, now)
        if cursor.seq is not None:
            for batch in feed.batches:
                if batch.seq > cursor.seq:
                    self.index.apply(replica, batch.events())
                    cursor.seq = batch.seq
                    ages.append(now - batch.taken_at)
        return Applied(tuple(ages), resynced)

    def forget(self, replica: str) -> None:
        """The replica is gone (stopped, died): it holds nothing any more."""
        self._cursors.pop(replica, None)
        self.index.drop(replica)

    def forget_all_but(self, replicas: set[str]) -> None:
        for replica in [r for r in self._cursors if r not in replicas]:
            self.forget(replica)

    def _resync(self, replica: str, cursor: _Cursor, feed: KVFeed, ages: list[float], now: float) -> bool:
        """Sets the cursor where the feed lets the view restart: a reset batch (what came before
        it no longer matters) or the snapshot, whichever is later."""
        reset = _last_reset(feed.batches)
        snapshot = feed.snapshot
        if snapshot is not None and (reset is None or snapshot.seq >= reset.seq):
            self.index.apply(replica, KVEvents(stored=unpack(snapshot.held), reset=True))
            cursor.seq = snapshot.seq
            ages.append(now - snapshot.taken_at)
            return True
        if reset is not None:
            cursor.seq = reset.seq - 1  # the reset batch itself is applied next, dropping the rest
            return True
        return False


def _last_reset(batches: tuple[KVBatch, ...]) -> KVBatch | None:
    for batch in reversed(batches):
        if batch.reset:
            return batch
    return None
