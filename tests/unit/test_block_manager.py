from __future__ import annotations

import itertools

import pytest

from museserve.engine.block_hashes import chain_hash, root_hash
from museserve.engine.block_manager import BlockManager
from museserve.engine.sequence import Sequence

_ids = itertools.count()


def make_seq(tokens: list[int] | range, salt: str = "tenant-a", rid: str | None = None) -> Sequence:
    return Sequence(rid or f"r{next(_ids)}", list(tokens), cache_salt=salt)


def run_prompt(bm: BlockManager, seq: Sequence) -> list[int]:
    """Admits `seq` on its cached prefix, computes every known token and registers its full
    blocks. Returns the reused block ids."""
    cached = bm.cached_prefix(seq)
    bm.admit(seq, cached, seq.num_tokens - len(cached) * bm.block_size)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_computed_blocks(seq)
    return cached


def hit_blocks(bm: BlockManager, tokens: list[int] | range, salt: str = "tenant-a") -> list[int]:
    """Cached prefix a fresh request with these tokens would reuse (takes no references)."""
    probe = make_seq(tokens, salt)
    found = bm.cached_prefix(probe)
    return found


def take_blocks(bm: BlockManager, n: int) -> Sequence:
    """Allocates `n` fresh blocks to a filler sequence whose content is never cached."""
    filler = make_seq([7] * (n * bm.block_size), salt="filler")
    bm.admit(filler, [], n * bm.block_size)
    assert len(filler.block_ids) == n
    return filler


def total_refs(bm: BlockManager) -> int:
    return sum(bm.ref_count(b) for b in range(bm.num_blocks))


def test_constructor_and_sequence_reject_empty_inputs() -> None:
    with pytest.raises(ValueError):
        BlockManager(0, 4)
    with pytest.raises(ValueError):
        BlockManager(4, 0)
    with pytest.raises(ValueError):
        Sequence("r", [], cache_salt="t")


@pytest.mark.parametrize(
    ("num_tokens", "expected"), [(0, 0), (1, 1), (3, 1), (4, 1), (5, 2), (8, 2), (9, 3), (16, 4), (17, 5)]
)
def test_blocks_for_rounds_up(num_tokens: int, expected: int) -> None:
    assert BlockManager(8, 4).blocks_for(num_tokens) == expected


def test_admit_grow_free_track_ref_counts_and_free_blocks() -> None:
    bm = BlockManager(8, 4)
    seq = make_seq(range(6))
    bm.admit(seq, [], 6)
    assert len(seq.block_ids) == 2
    assert len(set(seq.block_ids)) == 2
    assert seq.num_computed_tokens == 0
    assert [bm.ref_count(b) for b in seq.block_ids] == [1, 1]
    assert bm.num_free_blocks == 6

    seq.num_computed_tokens = 6
    assert bm.can_grow(seq, 2)
    bm.grow(seq, 2)  # 8 tokens still fit two blocks
    assert len(seq.block_ids) == 2
    bm.grow(seq, 3)  # 9 tokens need a third
    assert len(seq.block_ids) == 3
    assert bm.num_free_blocks == 5
    assert total_refs(bm) == 3

    held = list(seq.block_ids)
    bm.free(seq)
    assert seq.block_ids == []
    assert seq.num_computed_tokens == 0
    assert all(bm.ref_count(b) == 0 for b in held)
    assert bm.num_free_blocks == 8
    assert total_refs(bm) == 0


def test_grow_refuses_more_blocks_than_free() -> None:
    bm = BlockManager(3, 4)
    seq = make_seq(range(8))
    bm.admit(seq, [], 8)
    seq.num_computed_tokens = 8
    assert bm.can_grow(seq, 4)
    assert not bm.can_grow(seq, 5)
    with pytest.raises(RuntimeError):
        bm.grow(seq, 5)
    assert len(seq.block_ids) == 2
    assert bm.num_free_blocks == 1


def test_usage_is_fraction_of_held_blocks() -> None:
    bm = BlockManager(8, 4)
    assert bm.usage == 0.0
    seq = make_seq(range(8))
    run_prompt(bm, seq)
    assert bm.usage == pytest.approx(0.25)
    other = make_seq(range(100, 104))
    run_prompt(bm, other)
    assert bm.usage == pytest.approx(0.375)
    bm.free(seq)
    bm.free(other)
    assert bm.usage == 0.0  # cached but free blocks are not in use


def test_cached_prefix_counts_only_full_computed_blocks() -> None:
    bm = BlockManager(16, 4)
    first = make_seq(range(10))  # two full blocks and a partial one
    run_prompt(bm, first)
    assert hit_blocks(bm, range(10)) == first.block_ids[:2]
    assert hit_blocks(bm, range(12)) == first.block_ids[:2]  # third block was never full
    assert hit_blocks(bm, range(6)) == first.block_ids[:1]
    assert hit_blocks(bm, range(3)) == []


def test_cache_registers_only_blocks_computed_so_far() -> None:
    bm = BlockManager(16, 4)
    seq = make_seq(range(12))
    bm.admit(seq, [], 12)
    seq.num_computed_tokens = 6  # first prefill chunk ran: one full block
    bm.cache_computed_blocks(seq)
    assert hit_blocks(bm, range(13)) == seq.block_ids[:1]
    seq.num_computed_tokens = 12
    bm.cache_computed_blocks(seq)
    assert hit_blocks(bm, range(13)) == seq.block_ids[:3]


def test_cached_prefix_always_leaves_a_token_to_compute() -> None:
    bm = BlockManager(16, 4)
    first = make_seq(range(8))  # exactly two blocks
    run_prompt(bm, first)
    assert hit_blocks(bm, range(8)) == first.block_ids[:1]
    assert hit_blocks(bm, range(9)) == first.block_ids[:2]

    second = make_seq(range(8))
    reused = run_prompt(bm, second)
    assert reused == first.block_ids[:1]
    assert second.num_cached_tokens == 4
    assert second.block_ids[0] == first.block_ids[0]
    assert second.block_ids[1] != first.block_ids[1]


def test_prefix_hit_shares_blocks_with_same_salt() -> None:
    bm = BlockManager(16, 4)
    first = make_seq(range(9), salt="acme")
    run_prompt(bm, first)
    second = make_seq(list(range(8)) + [99, 98], salt="acme")
    cached = bm.cached_prefix(second)
    assert cached == first.block_ids[:2]
    bm.admit(second, cached, second.num_tokens - 8)
    assert second.num_computed_tokens == 8
    assert second.num_cached_tokens == 8
    assert second.block_ids[:2] == first.block_ids[:2]
    assert [bm.ref_count(b) for b in first.block_ids[:2]] == [2, 2]
    assert bm.ref_count(first.block_ids[2]) == 1
    assert len(second.block_ids) == 3
    assert second.block_ids[2] not in first.block_ids
    assert total_refs(bm) == len(first.block_ids) + len(second.block_ids)
    assert bm.num_free_blocks == 16 - 4


def test_no_prefix_hit_across_salts() -> None:
    bm = BlockManager(16, 4)
    run_prompt(bm, make_seq(range(9), salt="tenant-a"))
    assert len(hit_blocks(bm, range(9), salt="tenant-a")) == 2
    assert hit_blocks(bm, range(9), salt="tenant-b") == []
    other = make_seq(range(9), salt="tenant-b")
    assert run_prompt(bm, other) == []
    assert other.num_cached_tokens == 0
    assert bm.prefix_hits == 0


def test_no_prefix_hit_when_an_earlier_block_differs() -> None:
    bm = BlockManager(16, 4)
    first = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9])
    run_prompt(bm, first)
    # Same second block, different first block: the chain breaks at the start.
    assert hit_blocks(bm, [0, 2, 3, 4, 5, 6, 7, 8, 9]) == []
    # Same first block, different second block: only the first is reused.
    assert hit_blocks(bm, [1, 2, 3, 4, 5, 6, 7, 0, 9]) == first.block_ids[:1]


def test_shared_block_survives_freeing_one_holder() -> None:
    bm = BlockManager(8, 4)
    first = make_seq(range(5))
    run_prompt(bm, first)
    second = make_seq(range(5))
    assert run_prompt(bm, second) == first.block_ids[:1]
    shared = first.block_ids[0]
    assert bm.ref_count(shared) == 2

    bm.free(first)
    assert bm.ref_count(shared) == 1
    assert bm.num_free_blocks == 8 - 2  # the shared block and second's own tail
    take_blocks(bm, bm.num_free_blocks)  # exhaust the free list: the shared block is not in it
    assert second.block_ids[0] == shared
    assert bm.ref_count(shared) == 1
    assert hit_blocks(bm, range(5)) == [shared]


def test_freed_cached_blocks_stay_reusable_until_evicted() -> None:
    bm = BlockManager(4, 4)
    first = make_seq(range(9))
    run_prompt(bm, first)
    head = first.block_ids[:2]
    bm.free(first)
    assert bm.num_free_blocks == 4

    again = make_seq(range(9))
    assert run_prompt(bm, again) == head
    assert again.block_ids[:2] == head
    assert [bm.ref_count(b) for b in head] == [1, 1]
    assert bm.num_free_blocks == 1
    bm.free(again)

    take_blocks(bm, 4)  # every block handed out: the cached content is gone
    assert hit_blocks(bm, range(9)) == []


def test_uncached_free_blocks_are_handed_out_before_cached_ones() -> None:
    bm = BlockManager(6, 2)
    cached_seq = make_seq([1, 2, 3, 4, 5])  # two full blocks and a partial one
    run_prompt(bm, cached_seq)
    bm.free(cached_seq)
    # Free: the partial block, three never used, then the two cached ones.
    take_blocks(bm, 4)
    assert len(hit_blocks(bm, [1, 2, 3, 4, 5])) == 2
    # Then the freed sequence's tail goes before its head.
    take_blocks(bm, 1)
    assert len(hit_blocks(bm, [1, 2, 3, 4, 5])) == 1
    take_blocks(bm, 1)
    assert hit_blocks(bm, [1, 2, 3, 4, 5]) == []


def test_cached_blocks_are_evicted_least_recently_freed_first() -> None:
    bm = BlockManager(4, 2)
    older = make_seq([1, 2, 3])
    newer = make_seq([4, 5, 6])
    run_prompt(bm, older)
    run_prompt(bm, newer)
    bm.free(older)
    bm.free(newer)
    take_blocks(bm, 2)  # the two partial, uncached blocks
    assert len(hit_blocks(bm, [1, 2, 3])) == 1
    assert len(hit_blocks(bm, [4, 5, 6])) == 1
    take_blocks(bm, 1)
    assert hit_blocks(bm, [1, 2, 3]) == []
    assert len(hit_blocks(bm, [4, 5, 6])) == 1
    take_blocks(bm, 1)
    assert hit_blocks(bm, [4, 5, 6]) == []


def test_reusing_a_cached_block_refreshes_its_recency() -> None:
    bm = BlockManager(4, 2)
    older = make_seq([1, 2, 3])
    newer = make_seq([4, 5, 6])
    run_prompt(bm, older)
    run_prompt(bm, newer)
    bm.free(older)
    bm.free(newer)
    reuser = make_seq([1, 2, 9])
    assert len(run_prompt(bm, reuser)) == 1
    bm.free(reuser)  # older's block is now the most recently freed
    take_blocks(bm, 2)
    take_blocks(bm, 1)
    assert hit_blocks(bm, [4, 5, 6]) == []
    assert len(hit_blocks(bm, [1, 2, 3])) == 1


def test_can_admit_counts_free_cached_blocks_it_reuses() -> None:
    bm = BlockManager(5, 4)
    first = make_seq(range(9))
    run_prompt(bm, first)
    bm.free(first)  # five free blocks, two of which hold the cached prefix
    prefix = list(range(8))

    fits = make_seq(prefix + list(range(100, 112)))  # 20 tokens: 2 reused + 3 fresh blocks
    cached = bm.cached_prefix(fits)
    assert len(cached) == 2
    assert bm.can_admit(fits, cached, 12)

    too_big = make_seq(prefix + list(range(100, 113)))  # 21 tokens: 2 reused + 4 fresh blocks
    cached_too = bm.cached_prefix(too_big)
    assert len(cached_too) == 2
    # Four fresh blocks seem free, but two of the five free blocks are the reused ones.
    assert not bm.can_admit(too_big, cached_too, 13)

    bm.admit(fits, cached, 12)
    assert bm.num_free_blocks == 0
    assert len(set(fits.block_ids)) == 5
    assert fits.block_ids[:2] == cached


def test_can_admit_does_not_discount_cached_blocks_held_by_others() -> None:
    bm = BlockManager(4, 4)
    holder = make_seq(range(9))
    run_prompt(bm, holder)  # three blocks held, one free
    newcomer = make_seq(list(range(8)) + [50, 51, 52])
    cached = bm.cached_prefix(newcomer)
    assert cached == holder.block_ids[:2]
    assert bm.can_admit(newcomer, cached, 3)  # one fresh block, and one is free
    assert not bm.can_admit(newcomer, cached, 5)
    bm.admit(newcomer, cached, 3)
    assert bm.num_free_blocks == 0


def test_duplicate_content_keeps_one_cache_entry_and_frees_cleanly() -> None:
    bm = BlockManager(4, 2)
    first = make_seq([1, 2, 3])
    second = make_seq([1, 2, 3])
    # Both admitted before either has computed anything: no sharing.
    bm.admit(first, bm.cached_prefix(first), 3)
    bm.admit(second, bm.cached_prefix(second), 3)
    assert not set(first.block_ids) & set(second.block_ids)
    for seq in (first, second):
        seq.num_computed_tokens = 3
        bm.cache_computed_blocks(seq)
    original = first.block_ids[0]
    assert hit_blocks(bm, [1, 2, 3]) == [original]

    bm.free(first)
    bm.free(second)
    assert bm.num_free_blocks == 4
    assert total_refs(bm) == 0
    assert hit_blocks(bm, [1, 2, 3]) == [original]


def test_duplicate_copy_is_evicted_before_the_cached_original() -> None:
    bm = BlockManager(5, 2)
    first = make_seq([1, 2, 3])
    second = make_seq([1, 2, 3])
    bm.admit(first, [], 3)
    bm.admit(second, [], 3)
    original = first.block_ids[0]
    for seq in (first, second):
        seq.num_computed_tokens = 3
        bm.cache_computed_blocks(seq)
    bm.free(second)
    bm.free(first)
    filler = take_blocks(bm, 4)  # never used, two partial blocks and the uncached duplicate
    assert hit_blocks(bm, [1, 2, 3]) == [original]
    bm.free(filler)
    again = make_seq([1, 2, 3])
    assert run_prompt(bm, again) == [original]
    bm.free(again)
    assert bm.ref_count(original) == 0


def test_disabled_prefix_caching_never_hits() -> None:
    bm = BlockManager(16, 4, enable_prefix_caching=False)
    first = make_seq(range(9))
    run_prompt(bm, first)
    assert hit_blocks(bm, range(9)) == []
    second = make_seq(range(9))
    assert run_prompt(bm, second) == []
    assert second.num_cached_tokens == 0
    assert not set(first.block_ids) & set(second.block_ids)
    assert bm.prefix_queries == 18
    assert bm.prefix_hits == 0


def test_prefix_counters_count_first_admissions_only() -> None:
    bm = BlockManager(16, 4)
    first = make_seq(range(9))
    run_prompt(bm, first)
    assert (bm.prefix_queries, bm.prefix_hits) == (9, 0)
    second = make_seq(range(10))
    run_prompt(bm, second)
    assert (bm.prefix_queries, bm.prefix_hits) == (19, 8)
    assert second.num_cached_tokens == 8

    # A preempted sequence comes back: no new queries, hits or cached tokens.
    bm.free(second)
    second.num_preemptions = 1
    second.append_token(77)
    cached = bm.cached_prefix(second)
    assert len(cached) == 2
    bm.admit(second, cached, second.num_tokens - 8)
    assert second.num_computed_tokens == 8
    assert second.num_cached_tokens == 8
    assert (bm.prefix_queries, bm.prefix_hits) == (19, 8)


def test_double_free_is_caught() -> None:
    bm = BlockManager(4, 4)
    seq = make_seq(range(6))
    bm.admit(seq, [], 6)
    stale = list(seq.block_ids)
    bm.free(seq)
    ghost = make_seq(range(6))
    ghost.block_ids = stale
    with pytest.raises(AssertionError):
        bm.free(ghost)


def test_hashes_depend_on_salt_tokens_and_parent() -> None:
    a, b = root_hash("tenant-a"), root_hash("tenant-b")
    assert a == root_hash("tenant-a")
    assert a != b
    assert len(a) == 16
    assert chain_hash(a, [1, 2]) == chain_hash(a, [1, 2])
    assert chain_hash(a, [1, 2]) != chain_hash(b, [1, 2])
    assert chain_hash(a, [1, 2]) != chain_hash(a, [1, 3])
    assert chain_hash(a, [1, 2]) != chain_hash(a, [2, 1])
    assert chain_hash(a, [1, 2]) != chain_hash(a, [1, 2, 0])
    assert chain_hash(chain_hash(a, [1, 2]), [3, 4]) != chain_hash(chain_hash(a, [9, 9]), [3, 4])
    assert chain_hash(a, [256]) != chain_hash(a, [1, 0])


def test_cached_later_block_is_not_reused_once_its_parent_is_evicted() -> None:
    bm = BlockManager(6, 2)
    short = make_seq([1, 2, 3])
    long = make_seq([1, 2, 3, 4, 5])
    bm.admit(short, [], 3)
    bm.admit(long, [], 5)
    for seq in (short, long):  # short registers [1, 2]; long only registers [3, 4]
        seq.num_computed_tokens = seq.num_tokens
        bm.cache_computed_blocks(seq)
    parent, child = short.block_ids[0], long.block_ids[1]
    bm.free(short)
    bm.free(long)
    take_blocks(bm, 4)
    assert hit_blocks(bm, [1, 2, 3, 4, 5]) == [parent, child]
    take_blocks(bm, 1)  # the parent was freed before the child: it goes first
    assert bm.ref_count(parent) == 1
    assert bm.ref_count(child) == 0
    assert hit_blocks(bm, [1, 2, 3, 4, 5]) == []
