"""Prefix routing without Ray: the index built from KV events, the choice between the longest
held prefix and load, the fallback, the tenant salt and media in the hashes."""

from __future__ import annotations

from museserve.engine.block_manager import BlockManager
from museserve.engine.kv_events import KVEvents
from museserve.messages import MediaSegment
from museserve.routing.choice import Reason, choose
from museserve.routing.prefix_index import PrefixIndex
from museserve.routing.prompt_blocks import prompt_block_hashes
from tests.support import prepared_request
from tests.unit.test_kv_tier_index import make_seq, run_prompt

BS = 4


def held_by(index: PrefixIndex, replica: str, tokens: list[int], tenant: str) -> list[bytes]:
    """Runs `tokens` through a block manager like `replica`'s and applies its events."""
    bm = BlockManager(64, BS)
    bm.kv_events.start()
    seq = make_seq(tokens, salt=tenant)
    run_prompt(bm, seq)
    index.apply(replica, bm.kv_events.take())
    return seq.block_hashes


def test_the_index_finds_the_longest_prefix_each_replica_holds() -> None:
    index = PrefixIndex()
    held_by(index, "a", list(range(24)), "acme")  # 6 blocks
    held_by(index, "b", list(range(10)), "acme")  # 2 full blocks
    request = prepared_request("r", list(range(30)), tenant="acme")
    assert index.matched_blocks(prompt_block_hashes(request, BS)) == {"a": 6, "b": 2}


def test_one_tenants_prefix_never_attracts_another_tenants_request() -> None:
    index = PrefixIndex()
    held_by(index, "a", list(range(24)), "acme")
    other = prepared_request("r", list(range(30)), tenant="globex")
    assert index.matched_blocks(prompt_block_hashes(other, BS)) == {}


def test_removed_and_reset_events_take_blocks_away() -> None:
    index = PrefixIndex()
    hashes = held_by(index, "a", list(range(24)), "acme")
    index.apply("a", KVEvents(removed=(hashes[3],)))
    assert index.matched_blocks(hashes[:6]) == {"a": 3}
    index.apply("a", KVEvents(reset=True))
    assert index.matched_blocks(hashes[:6]) == {} and index.num_held("a") == 0


def test_the_longest_holder_wins_within_the_load_gap() -> None:
    loads = {"a": 3, "b": 1, "c": 0}
    choice = choose({"a": 6, "b": 2}, loads, min_hit_blocks=2, max_load_gap=4)
    assert (choice.replica, choice.reason, choice.matched_blocks) == ("a", Reason.PREFIX_HIT, 6)


def test_a_busy_holder_gives_way_to_the_next_then_to_the_fallback() -> None:
    loads = {"a": 9, "b": 2, "c": 0}
    assert choose({"a": 6, "b": 2}, loads, min_hit_blocks=2, max_load_gap=4).replica == "b"
    fallback = choose({"a": 6}, loads, min_hit_blocks=2, max_load_gap=4)
    assert (fallback.replica, fallback.reason) == (None, Reason.LOAD_FALLBACK)


def test_too_short_a_hit_or_an_ineligible_holder_is_no_hit() -> None:
    assert choose({"a": 1}, {"a": 0, "b": 0}, min_hit_blocks=2, max_load_gap=4).reason is Reason.NO_HIT
    assert choose({"gone": 9}, {"a": 0}, min_hit_blocks=2, max_load_gap=4).reason is Reason.NO_HIT


def test_equal_placeholders_over_different_media_hash_apart() -> None:
    def with_image(digest: str) -> list[bytes]:
        image = MediaSegment(kind="image", start=4, num_tokens=8, feature_dim=2, features=bytes(32), digest=digest)
        return prompt_block_hashes(prepared_request("r", [5] * 20, tenant="acme", media=(image,)), BS)

    first, second = with_image("01" * 32), with_image("02" * 32)
    assert first[0] == second[0]  # block 0 holds no media
    assert first[1] != second[1] and first[2] != second[2]
