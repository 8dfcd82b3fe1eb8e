"""What a replica's prefix cache gained and lost, in batches: the KV events a router reads to
know which replica holds which prefix. No tensors.

A hash counts as held while its KV is in the device pool or the second tier (a tier hit is a
copy, far cheaper than a prefill). Within a batch only a hash's last change is kept, so a
batch applies in any order; `reset` says everything held before it is gone (a worker died, or
the replica started: a new replica holds nothing)."""

from __future__ import annotations

from dataclasses import dataclass

from museserve.engine.block_hashes import BlockHash


@dataclass(frozen=True, slots=True)
class KVEvents:
    stored: tuple[BlockHash, ...] = ()
    removed: tuple[BlockHash, ...] = ()
    reset: bool = False  # apply first: drop everything the replica held, then these

    @property
    def is_empty(self) -> bool:
        return not (self.stored or self.removed or self.reset)


class KVEventLog:
    """Records nothing until `start()`: an engine nobody routes by (a benchmark, a test, a pool
    on power-of-two) must not keep every hash it ever saw."""

    def __init__(self) -> None:
        self._changes: dict[BlockHash, bool] = {}  # hash -> held after its last change
        self._reset = True  # a new replica holds nothing, whatever a router knew of its id
        self.recording = False

    def start(self) -> None:
        """From now on, until the reader's first `take`: a reset, then every change."""
        self.recording = True
        self.reset()

    def stored(self, block_hash: BlockHash) -> None:
        if self.recording:
            self._changes[block_hash] = True

    def removed(self, block_hash: BlockHash) -> None:
        if self.recording:
            self._changes[block_hash] = False

    def reset(self) -> None:
        self._changes.clear()
        self._reset = True

    def take(self) -> KVEvents:
        """The changes since the last take, and clears them."""
        events = KVEvents(
            stored=tuple(h for h, held in self._changes.items() if held),
            removed=tuple(h for h, held in self._changes.items() if not held),
            reset=self._reset,
        )
        self._changes.clear()
        self._reset = False
        return events
