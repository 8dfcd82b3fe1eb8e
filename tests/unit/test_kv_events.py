"""A replica's KV events: which block hashes it starts and stops holding (device pool or
second tier), batched with only each hash's last change, and a reset when it starts or loses
its cache. No tensors."""

from __future__ import annotations

from museserve.engine.block_hashes import chain_hash, extend_chain, root_hash
from museserve.engine.block_manager import BlockManager
from museserve.engine.kv_events import KVEventLog
from museserve.engine.kv_tier_index import TierIndex
from tests.unit.test_kv_tier_index import fill, make_seq, run_prompt

BS = 4


def test_a_new_log_says_reset_once_and_keeps_only_each_hashs_last_change() -> None:
    log = KVEventLog()
    log.start()
    log.stored(b"a")
    log.stored(b"b")
    log.removed(b"a")
    first = log.take()
    assert first.reset and first.stored == (b"b",) and first.removed == (b"a",)
    assert log.take().is_empty
    log.removed(b"b")
    log.stored(b"b")
    assert log.take().stored == (b"b",)


def test_a_log_nobody_reads_records_nothing() -> None:
    log = KVEventLog()
    log.stored(b"a")
    log.removed(b"b")
    log.start()
    events = log.take()
    assert events.reset and not events.stored and not events.removed


def test_registered_blocks_are_stored_and_device_evictions_removed() -> None:
    bm = BlockManager(4, BS)
    bm.kv_events.start()
    bm.kv_events.take()
    seq = make_seq(range(9))  # two full blocks and one token
    run_prompt(bm, seq)
    events = bm.kv_events.take()
    assert events.stored == tuple(seq.block_hashes[:2]) and not events.reset
    bm.free(seq)
    fill(bm, 4)  # evicts both cached blocks: no tier, so the replica no longer holds them
    assert set(bm.kv_events.take().removed) == set(seq.block_hashes[:2])


def test_a_block_evicted_to_the_tier_is_still_held_until_the_tier_drops_it() -> None:
    bm = BlockManager(4, BS, tier=TierIndex(2))
    bm.kv_events.start()
    first, second = make_seq(range(9)), make_seq(range(100, 109), salt="tenant-b")
    for seq in (first, second):
        run_prompt(bm, seq)
        bm.free(seq)
        bm.free(fill(bm, 4))  # evicts the prompt's two cached blocks into the tier's two slots
        bm.take_transfers()
    # The first prompt's blocks went to the tier (still held), then the second's replaced them.
    events = bm.kv_events.take()
    assert set(events.removed) == set(first.block_hashes[:2])
    assert set(events.stored) == set(second.block_hashes[:2])


def test_losing_the_cache_resets() -> None:
    bm = BlockManager(4, BS)
    bm.kv_events.start()
    bm.kv_events.take()
    run_prompt(bm, make_seq(range(8)))
    bm.drop_prefix_cache()
    events = bm.kv_events.take()
    assert events.reset and events.stored == ()


def test_the_hashes_a_router_computes_are_the_engines() -> None:
    bm = BlockManager(8, BS)
    seq = make_seq(range(13), salt="acme")
    run_prompt(bm, seq)
    assert extend_chain([], list(range(13)), "acme", {}, BS, 3) == seq.block_hashes[:3]
    assert seq.block_hashes[0] == chain_hash(root_hash("acme"), [0, 1, 2, 3])
