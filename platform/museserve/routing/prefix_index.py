"""Which replica holds which KV block, from the replicas' own KV events (`engine.kv_events`):
exact chain hashes, so a match means the replica holds that prefix for that tenant."""

from __future__ import annotations

from collections.abc import Sequence

from museserve.engine.block_hashes import BlockHash
from museserve.engine.kv_events import KVEvents


class PrefixIndex:
    def __init__(self) -> None:
        self._holders: dict[BlockHash, set[str]] = {}  # hash -> replicas holding it
        self._held: dict[str, set[BlockHash]] = {}  # replica -> the hashes it holds

    @property
    def replicas(self) -> list[str]:
        return list(self._held)

    @property
    def num_blocks(self) -> int:
        """Distinct hashes some replica holds."""
        return len(self._holders)

    def num_held(self, replica: str) -> int:
        return len(self._held.get(replica, ()))

    def held(self, replica: str) -> frozenset[BlockHash]:
        return frozenset(self._held.get(replica, ()))

    def apply(self, replica: str, events: KVEvents) -> None:
        """One batch of a replica's events, in the order they were taken."""
        if events.reset:
            self.drop(replica)
        held = self._held.setdefault(replica, set())
        for block_hash in events.removed:
            if block_hash in held:
                held.discard(block_hash)
                self._release(block_hash, replica)
        for block_hash in events.stored:
            held.add(block_hash)
            self._holders.setdefault(block_hash, set()).add(replica)

    def drop(self, replica: str) -> None:
        """Forgets a replica (it died, or restarted: a new one holds nothing)."""
        for block_hash in self._held.pop(replica, set()):
            self._release(block_hash, replica)

    def matched_blocks(self, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """Per replica holding the first block: how many of the leading blocks it holds in a row."""
        counts: dict[str, int] = {}
        alive: set[str] | None = None
        for index, block_hash in enumerate(hashes):
            holders = self._holders.get(block_hash)
            alive = set(holders or ()) if alive is None else alive & (holders or set())
            if not alive:
                break
            for replica in alive:
                counts[replica] = index + 1
        return counts

    def _release(self, block_hash: BlockHash, replica: str) -> None:
        holders = self._holders.get(block_hash)
        if holders is not None:
            holders.discard(replica)
            if not holders:
                del self._holders[block_hash]
