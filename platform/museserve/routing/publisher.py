"""A replica's side of the feed: each publication cuts a batch from the block manager's event
log (when it has any) and returns the feed routers read. Called by Serve's controller every
`routing.stats_period_s`, on the replica's event loop (the engine's): no lock is needed."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable

from museserve.engine.block_hashes import BlockHash
from museserve.engine.kv_events import KVEventLog
from museserve.routing.feed import KVBatch, KVFeed, KVSnapshot, pack


class KVFeedPublisher:
    def __init__(
        self,
        log: KVEventLog,
        held: Callable[[], Iterable[BlockHash]],
        *,
        event_batches: int,
        snapshot_every: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`held`: every hash the replica holds now (device and second tier)."""
        self.epoch = uuid.uuid4().hex
        self._log = log
        self._held = held
        self._batches: deque[KVBatch] = deque(maxlen=event_batches)
        self._snapshot_every = snapshot_every
        self._clock = clock
        self._seq = 0
        self._publications = 0

    def publish(self) -> KVFeed:
        now = self._clock()
        events = self._log.take()
        if not events.is_empty:
            self._seq += 1
            self._batches.append(KVBatch.of(self._seq, now, events))
        self._publications += 1
        snapshot = None
        if self._publications % self._snapshot_every == 0:
            snapshot = KVSnapshot(self._seq, now, pack(self._held()))
        return KVFeed(self.epoch, tuple(self._batches), snapshot)
