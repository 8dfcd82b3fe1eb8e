"""The second KV tier's logic without tensors: the LRU index of tier slots, and the block
manager recording saves on eviction and loads on admission."""

from __future__ import annotations

import itertools

import pytest

from museserve.engine.block_manager import BlockManager
from museserve.engine.kv_tier_index import TierIndex
from museserve.engine.scheduler import Scheduler, SchedulerLimits
from museserve.engine.sequence import Sequence

_ids = itertools.count()


def make_seq(tokens: list[int] | range, salt: str = "tenant-a") -> Sequence:
    return Sequence(f"r{next(_ids)}", list(tokens), cache_salt=salt)


def run_prompt(bm: BlockManager, seq: Sequence) -> None:
    """Admits `seq` on its device and tier prefix, computes every token and registers its full blocks."""
    cached = bm.cached_prefix(seq)
    from_tier = bm.tier_prefix(seq, len(cached))
    bm.admit(seq, cached, seq.num_tokens - (len(cached) + len(from_tier)) * bm.block_size, from_tier)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_computed_blocks(seq)


def fill(bm: BlockManager, n: int) -> Sequence:
    """Takes `n` free blocks (evicting the least recently used cached ones) for uncached content."""
    filler = make_seq([7] * (n * bm.block_size), salt="filler")
    bm.admit(filler, [], n * bm.block_size)
    return filler


def test_tier_index_hands_out_free_slots_then_replaces_the_least_recently_used() -> None:
    index = TierIndex(3)
    assert [index.reserve(h) for h in (b"a", b"b", b"c")] == [0, 1, 2]
    assert (index.lookup(b"b"), index.lookup(b"z"), len(index)) == (1, None, 3)
    index.touch(b"a")  # b is now the least recently used
    assert index.reserve(b"d") == 1
    assert index.lookup(b"b") is None and index.lookup(b"d") == 1
    assert index.reserve(b"e", pinned={2}) == 0  # c (slot 2) is older but pinned: a goes
    assert index.reserve(b"f", pinned={0, 1, 2}) is None  # every slot pinned: nothing replaced
    assert index.lookup(b"f") is None and len(index) == 3
    index.clear()
    assert len(index) == 0 and index.reserve(b"a") == 0
    with pytest.raises(ValueError):
        TierIndex(0)


def test_eviction_saves_the_block_under_its_hash() -> None:
    bm = BlockManager(4, 4, tier=TierIndex(8))
    prompt = make_seq(range(9))  # two full blocks, one partial
    run_prompt(bm, prompt)
    hashes, held = list(prompt.block_hashes), list(prompt.block_ids)
    bm.free(prompt)
    assert bm.take_transfers() == ((), ())
    fill(bm, 3)  # one empty block, the partial one, then the LRU cached block: the prompt's second
    saves, loads = bm.take_transfers()
    assert loads == ()
    assert saves == ((held[1], bm.tier.lookup(hashes[1])),)
    assert bm.tier.lookup(hashes[0]) is None  # still on the device
    assert (bm.tier_saves, bm.tier_loads) == (1, 0)


def test_a_prefix_hit_runs_through_device_blocks_then_tier_slots_and_admit_loads_them() -> None:
    bm = BlockManager(6, 4, tier=TierIndex(8))
    first = make_seq(range(13))  # three full blocks and one token
    run_prompt(bm, first)
    hashes, held = list(first.block_hashes), list(first.block_ids)
    bm.free(first)
    filler = fill(bm, 4)  # two empty blocks, the partial one, then block 2 (the prompt's tail)
    slot = bm.tier.lookup(hashes[2])
    assert bm.take_transfers()[0] == ((held[2], slot),)
    bm.free(filler)

    again = make_seq([*range(13), 99])
    cached = bm.cached_prefix(again)
    from_tier = bm.tier_prefix(again, len(cached))
    assert (cached, from_tier) == (held[:2], [slot])
    queries, hits = bm.prefix_queries, bm.prefix_hits
    bm.admit(again, cached, 2, from_tier)
    saves, loads = bm.take_transfers()
    assert saves == () and loads == ((slot, again.block_ids[2]),)
    assert again.block_ids[:2] == held[:2] and again.block_ids[2] not in held[:2]
    assert again.num_computed_tokens == again.num_cached_tokens == 12
    assert (bm.prefix_queries - queries, bm.prefix_hits - hits) == (14, 12)
    assert (bm.tier_hits, bm.tier_loads) == (4, 1)


def test_the_tier_leaves_a_token_to_compute_and_stays_per_tenant() -> None:
    bm = BlockManager(3, 4, tier=TierIndex(8))
    prompt = make_seq(range(12))  # exactly three full blocks
    run_prompt(bm, prompt)
    bm.free(prompt)
    fill(bm, 3)  # all three evicted to the tier
    assert len(bm.take_transfers()[0]) == 3
    same = make_seq(range(12))
    assert bm.cached_prefix(same) == []
    assert len(bm.tier_prefix(same, 0)) == 2  # the third block holds the last token: computed again
    assert bm.tier_prefix(make_seq(range(12), salt="tenant-b"), 0) == []


def test_a_full_tier_replaces_its_least_recently_used_block() -> None:
    bm = BlockManager(2, 4, tier=TierIndex(2))
    prompts = [make_seq(range(base, base + 5)) for base in (0, 100, 200)]  # one full block each
    saves = []
    for prompt in prompts:  # each admission evicts the block the prompt before it cached
        run_prompt(bm, prompt)
        saves += bm.take_transfers()[0]  # one plan each
        bm.free(prompt)
    bm.free(fill(bm, 2))
    saves += bm.take_transfers()[0]
    assert len(saves) == 3 and len({slot for _, slot in saves}) == 2
    assert bm.tier.lookup(prompts[0].block_hashes[0]) is None  # the oldest one made room
    assert [bm.tier.lookup(p.block_hashes[0]) for p in prompts[1:]] == [saves[1][1], saves[0][1]]


def test_without_a_tier_eviction_records_nothing() -> None:
    bm = BlockManager(2, 4)
    prompt = make_seq(range(5))
    run_prompt(bm, prompt)
    bm.free(prompt)
    fill(bm, 2)
    assert bm.take_transfers() == ((), ())
    assert bm.tier_prefix(make_seq(range(5)), 0) == []
    assert BlockManager(2, 4, enable_prefix_caching=False, tier=TierIndex(4)).tier is None


def test_dropping_the_prefix_cache_clears_the_tier() -> None:
    bm = BlockManager(2, 4, tier=TierIndex(4))
    prompt = make_seq(range(5))
    run_prompt(bm, prompt)
    bm.free(prompt)
    fill(bm, 2)
    assert len(bm.tier) == 1
    bm.drop_prefix_cache()
    assert len(bm.tier) == 0 and bm.take_transfers() == ((), ())
    assert bm.tier_prefix(make_seq(range(5)), 0) == []


def test_a_slot_loaded_in_a_plan_is_not_saved_into_in_the_same_plan() -> None:
    bm = BlockManager(2, 4, tier=TierIndex(1))
    prompt = make_seq(range(5))
    run_prompt(bm, prompt)
    bm.free(prompt)
    bm.free(fill(bm, 2))
    ((_, slot),) = bm.take_transfers()[0]
    other = make_seq(range(50, 55))
    run_prompt(bm, other)  # its full block is now cached on the device
    bm.free(other)
    again = make_seq(range(5))
    from_tier = bm.tier_prefix(again, 0)
    assert from_tier == [slot]
    # The load takes the empty block; the last token's block evicts `other`'s cached one while the
    # only slot is pinned by the load: its content is dropped, not saved over the slot being read.
    bm.admit(again, [], 1, from_tier)
    saves, loads = bm.take_transfers()
    assert saves == () and loads == ((slot, again.block_ids[0]),)
    assert bm.tier.lookup(other.block_hashes[0]) is None
    assert bm.tier.lookup(prompt.block_hashes[0]) == slot


def test_a_loaded_block_is_cached_only_once_its_step_came_back() -> None:
    bm = BlockManager(4, 4, tier=TierIndex(4))
    prompt = make_seq(range(9))  # two full blocks and a partial one
    run_prompt(bm, prompt)
    bm.free(prompt)
    bm.free(fill(bm, 4))  # both full blocks go to the tier
    bm.take_transfers()

    aborted = make_seq(range(9))
    from_tier = bm.tier_prefix(aborted, 0)
    assert len(from_tier) == 2
    bm.admit(aborted, [], 1, from_tier)
    assert len(bm.take_transfers()[1]) == 2
    # Its plan has not run: the fresh blocks hold nothing yet, and no lookup may find them.
    assert bm.cached_prefix(make_seq(range(9))) == []
    bm.free(aborted)  # aborted or preempted before its step came back
    probe = make_seq(range(9))
    assert bm.cached_prefix(probe) == [] and bm.tier_prefix(probe, 0) == from_tier

    finished = make_seq(range(9))
    bm.admit(finished, [], 1, bm.tier_prefix(finished, 0))
    bm.take_transfers()
    finished.num_computed_tokens = 9
    bm.cache_computed_blocks(finished)  # its step (loads, then the last token) came back
    assert bm.cached_prefix(make_seq(range(9))) == finished.block_ids[:2]


def test_the_plan_carries_the_copies_its_scheduling_recorded() -> None:
    bm = BlockManager(6, 4, tier=TierIndex(4))
    scheduler = Scheduler(SchedulerLimits(4, 8, max_batched_tokens=64, max_prefill_chunk=64), bm)

    def step(seq: Sequence):
        scheduler.add(seq)
        plan = scheduler.schedule()
        scheduler.update(seq, plan.sequences[0], 1)
        scheduler.remove(seq)
        return plan

    first = make_seq(range(9))
    assert step(first).kv_saves == ()
    plan = step(make_seq(range(100, 117)))  # five blocks: four empty ones, then the LRU cached one
    assert len(plan.kv_saves) == 1 and plan.kv_loads == ()
    ((_, slot),) = plan.kv_saves
    again = step(make_seq(range(9)))
    assert again.kv_loads == ((slot, again.sequences[0].block_ids[1]),)
    assert again.sequences[0].first_position == 8  # two blocks reused: one on the device, one loaded
    assert scheduler.schedule().kv_saves == ()  # nothing planned: nothing drained
