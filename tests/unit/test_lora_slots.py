"""Adapter residency as plain bookkeeping: empty slots first, then the least recently used idle
adapter; an adapter in use, loading, or kept by an operator is never evicted."""

from __future__ import annotations

from museserve.lora.slots import AdapterSlots


def loaded(slots: AdapterSlots, name: str) -> int:
    claim = slots.claim(name)
    assert claim is not None
    slots.mark_loaded(claim.slot)
    slots.unpin(claim.slot)
    return claim.slot


def test_empty_slots_fill_first_then_the_least_recently_used_idle_adapter_goes() -> None:
    slots = AdapterSlots(2)
    a, b = loaded(slots, "a"), loaded(slots, "b")
    assert a != b
    slots.pin(a)
    slots.unpin(a)  # a used after b
    claim = slots.claim("c")
    assert claim is not None and claim.evicted == "b" and claim.slot == b
    assert slots.slot_of("b") is None and slots.slot_of("c") == b


def test_an_adapter_in_use_or_loading_is_never_evicted() -> None:
    slots = AdapterSlots(2)
    a = loaded(slots, "a")
    slots.pin(a)
    loading = slots.claim("b")  # pinned by its load, not loaded yet
    assert loading is not None and not slots.is_loaded(loading.slot)
    assert slots.claim("c") is None and not slots.can_claim()
    assert not slots.evict("a") and not slots.evict("b")
    slots.unpin(a)
    claim = slots.claim("c")
    assert claim is not None and claim.evicted == "a"


def test_a_kept_adapter_stays_until_released() -> None:
    slots = AdapterSlots(1)
    loaded(slots, "kept")
    slots.keep("kept", True)
    assert slots.claim("other") is None
    slots.keep("kept", False)
    claim = slots.claim("other")
    assert claim is not None and claim.evicted == "kept"


def test_a_failed_load_leaves_the_slot_empty_and_the_name_unknown() -> None:
    slots = AdapterSlots(1)
    claim = slots.claim("bad")
    assert claim is not None
    slots.pin(claim.slot)  # a second request waiting on the load
    slots.abandon(claim.slot)
    assert slots.slot_of("bad") is None and slots.resident() == []
    assert slots.claim("good") is not None


def test_resident_lists_loaded_adapters_with_their_users() -> None:
    slots = AdapterSlots(3)
    a = loaded(slots, "a")
    slots.pin(a)
    slots.claim("b")  # loading: not listed
    assert slots.resident() == [("a", a, 1)]
