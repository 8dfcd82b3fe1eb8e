"""Which adapter each of a replica's adapter slots holds: plain bookkeeping, no tensors.

A slot is pinned while requests use its adapter (and while it loads); only an idle slot is
ever given to another adapter, the least recently used one first. A kept slot (an operator's
`ops adapters load`) is never given away. Invariant: a name is in at most one slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SlotState:
    name: str | None = None
    pins: int = 0
    loaded: bool = False  # its weights are in place; False while they load
    kept: bool = False
    last_used: int = 0  # tick of its latest pin or unpin


@dataclass(frozen=True)
class Claim:
    slot: int
    evicted: str | None  # the idle adapter it held, now gone


class AdapterSlots:
    def __init__(self, num_slots: int):
        self.slots = [SlotState() for _ in range(num_slots)]
        self._by_name: dict[str, int] = {}
        self._tick = 0

    def slot_of(self, name: str) -> int | None:
        return self._by_name.get(name)

    def is_loaded(self, slot: int) -> bool:
        return self.slots[slot].loaded

    def pin(self, slot: int) -> None:
        state = self.slots[slot]
        assert state.name is not None, "only a slot holding an adapter is pinned"
        state.pins += 1
        state.last_used = self._next_tick()

    def unpin(self, slot: int) -> None:
        state = self.slots[slot]
        assert state.pins > 0, f"slot {slot} is not pinned"
        state.pins -= 1
        state.last_used = self._next_tick()

    def can_claim(self) -> bool:
        return any(state.name is None or self._idle(state) for state in self.slots)

    def claim(self, name: str) -> Claim | None:
        """A slot for `name` (not resident): an empty one, else the least recently used idle one,
        its adapter evicted. The slot comes back pinned and not loaded. None: every slot is in use."""
        assert name not in self._by_name, f"{name} is already in slot {self._by_name.get(name)}"
        empty = [i for i, state in enumerate(self.slots) if state.name is None]
        idle = sorted((state.last_used, i) for i, state in enumerate(self.slots) if self._idle(state))
        if not empty and not idle:
            return None
        slot = empty[0] if empty else idle[0][1]
        evicted = self.slots[slot].name
        if evicted is not None:
            del self._by_name[evicted]
        self.slots[slot] = SlotState(name=name)
        self._by_name[name] = slot
        self.pin(slot)
        return Claim(slot, evicted)

    def mark_loaded(self, slot: int) -> None:
        self.slots[slot].loaded = True

    def abandon(self, slot: int) -> None:
        """A load that failed: the slot is empty again (its pins are the failed loaders')."""
        name = self.slots[slot].name
        if name is not None:
            del self._by_name[name]
        self.slots[slot] = SlotState()

    def keep(self, name: str, kept: bool) -> None:
        slot = self._by_name.get(name)
        if slot is not None:
            self.slots[slot].kept = kept

    def evict(self, name: str) -> bool:
        """Empties `name`'s slot if it is idle and loaded; False if in use (or not resident)."""
        slot = self._by_name.get(name)
        if slot is None or self.slots[slot].pins or not self.slots[slot].loaded:
            return False
        self.abandon(slot)
        return True

    def resident(self) -> list[tuple[str, int, int]]:
        """(name, slot, requests using it) of every loaded adapter, by slot."""
        return [(s.name, i, s.pins) for i, s in enumerate(self.slots) if s.name is not None and s.loaded]

    @staticmethod
    def _idle(state: SlotState) -> bool:
        return state.name is not None and state.pins == 0 and state.loaded and not state.kept

    def _next_tick(self) -> int:
        self._tick += 1
        return self._tick
