"""The second KV tier's index: which block hashes have their KV in which tier slot. No tensors.

The tier (host memory, or a file on disk: `runner.kv_tier.KVTier`) holds `num_slots` blocks.
A cached block evicted from the device pool is copied to a slot, so a later prompt with the
same prefix copies it back instead of recomputing it. Slots are replaced least recently used
first; a slot with a copy still to run in the plan being built is pinned by the caller and
never replaced (two copies touching one slot in one plan could run in the wrong order).

A slot's content depends only on its hash (the chain over the tenant, tokens and media), so an
entry stays valid until it is replaced or the index is cleared.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container

from museserve.engine.block_hashes import BlockHash


class TierIndex:
    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError("a KV tier needs at least one slot")
        self.num_slots = num_slots
        self._slots: OrderedDict[BlockHash, int] = OrderedDict()  # least recently used first
        self._unused = list(range(num_slots - 1, -1, -1))  # popped from the end: slot 0 first

    def __len__(self) -> int:
        return len(self._slots)

    def hashes(self) -> list[BlockHash]:
        return list(self._slots)

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The slot holding this hash's KV, or None. Leaves the LRU order as it is."""
        return self._slots.get(block_hash)

    def touch(self, block_hash: BlockHash) -> None:
        """Marks the entry most recently used (it was just hit, or its content seen again)."""
        self._slots.move_to_end(block_hash)

    def reserve(
        self,
        block_hash: BlockHash,
        pinned: Container[int] = (),
        on_replace: Callable[[BlockHash], None] | None = None,
    ) -> int | None:
        """A slot for `block_hash` (not in the index yet): an unused one, else the least recently
        used entry's, except slots in `pinned` (`on_replace` is told the hash it drops). None
        when every slot is pinned."""
        assert block_hash not in self._slots, "reserve a hash only once; touch it when seen again"
        if self._unused:
            slot = self._unused.pop()
        else:
            victim = next((h for h, s in self._slots.items() if s not in pinned), None)
            if victim is None:
                return None
            slot = self._slots.pop(victim)
            if on_replace is not None:
                on_replace(victim)
        self._slots[block_hash] = slot
        return slot

    def clear(self) -> None:
        """Forgets every entry: the tier's storage was lost with its worker."""
        self._slots.clear()
        self._unused = list(range(self.num_slots - 1, -1, -1))
