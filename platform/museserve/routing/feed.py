"""What a model replica publishes for routers, as Ray Serve routing stats: its KV events in
numbered batches, now and then every hash it holds (its load travels beside it:
`LOAD_STATS_KEY`). No tensors, no Ray.

Invariants of one `KVFeed`:
- `batches` have consecutive `seq` numbers, oldest first: the last few a replica cut.
- `snapshot.seq` is the last batch cut when it was taken: the snapshot is the held set after
  applying every batch up to it, so a router resumes from it at `seq + 1`.
- A new `epoch` is a new engine (a restarted replica): it holds nothing of the old one's.
Hashes travel packed, `HASH_BYTES` each, in one bytes object per list: one pickle object,
not thousands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from museserve.engine.block_hashes import BlockHash
from museserve.engine.kv_events import KVEvents

HASH_BYTES = 16  # `engine.block_hashes.chain_hash`'s digest size


def pack(hashes: Iterable[BlockHash]) -> bytes:
    return b"".join(hashes)


def unpack(packed: bytes) -> tuple[BlockHash, ...]:
    return tuple(packed[i : i + HASH_BYTES] for i in range(0, len(packed), HASH_BYTES))


@dataclass(frozen=True, slots=True)
class KVBatch:
    seq: int
    taken_at: float  # wall-clock time.time() when it was cut: a router's staleness is now minus this
    stored: bytes  # packed hashes
    removed: bytes
    reset: bool = False  # everything held before it is gone (a new engine, a lost worker)

    @classmethod
    def of(cls, seq: int, taken_at: float, events: KVEvents) -> KVBatch:
        return cls(seq, taken_at, pack(events.stored), pack(events.removed), events.reset)

    def events(self) -> KVEvents:
        return KVEvents(stored=unpack(self.stored), removed=unpack(self.removed), reset=self.reset)


@dataclass(frozen=True, slots=True)
class KVSnapshot:
    seq: int
    taken_at: float
    held: bytes  # packed hashes


@dataclass(frozen=True, slots=True)
class KVFeed:
    epoch: str
    batches: tuple[KVBatch, ...]
    snapshot: KVSnapshot | None


ROUTING_STATS_KEY = "kv_feed"  # the feed's key in a replica's routing stats
LOAD_STATS_KEY = "load"  # the replica's `messages.ReplicaLoad`, for routing and admission
