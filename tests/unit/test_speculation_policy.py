"""Speculation's policy, no tensors: the per-request lookahead, n-gram lookup, the scheduler's
proposal slots (budget, token cap, free blocks, batch size) and the rollback of rejected slots."""

from __future__ import annotations

import numpy as np
import pytest

from museserve.engine.block_manager import BlockManager
from museserve.engine.load_meter import prefill_tokens
from museserve.engine.plan import ScheduledSequence, SchedulerPlan
from museserve.engine.scheduler import Scheduler, SchedulerLimits
from museserve.engine.sequence import Sequence
from museserve.engine.speculation import Speculation
from museserve.runner.ngram import TokenBuffer, lookup
from museserve.runner.proposer import Proposal, with_drafts


def test_lookahead_follows_the_acceptance_rate() -> None:
    spec = Speculation(max_tokens=8)
    start = spec.lookahead()
    for _ in range(20):
        spec.record(proposed=spec.lookahead() or 1, accepted=spec.lookahead() or 1)  # all accepted
    assert spec.lookahead() == 8 > start
    for _ in range(3):
        spec.record(proposed=4, accepted=1)
    assert 1 <= spec.lookahead() < 8


def test_a_request_whose_proposals_fail_pauses_for_doubling_spans_then_probes() -> None:
    spec = Speculation(max_tokens=4, min_acceptance=0.3)
    pauses = []
    for _ in range(4):
        while spec.lookahead() == 0:
            pass
        steps = 0
        spec.record(proposed=2, accepted=0)
        while spec.lookahead() == 0:
            steps += 1
        pauses.append(steps)
        assert spec.lookahead() >= 0
    assert pauses == sorted(pauses) and pauses[-1] > pauses[0]
    assert spec.num_accepted == 0


def test_nothing_proposed_teaches_nothing() -> None:
    spec = Speculation(max_tokens=4)
    before = spec.acceptance
    spec.record(proposed=0, accepted=0)
    assert spec.acceptance == before and spec.num_proposed == 0


def test_the_cap_keeps_proposals_short_of_a_forced_token() -> None:
    spec = Speculation(max_tokens=4, acceptance=0.99, cap=2)
    assert spec.lookahead() == 2
    spec.cap = 0
    assert spec.lookahead() == 0


@pytest.mark.parametrize(
    ("tokens", "max_n", "min_n", "k", "expected"),
    [
        ([1, 2, 3, 4, 9, 1, 2, 3], 3, 1, 2, (4, 9)),  # the 3-gram 1 2 3 occurred before: what followed it
        ([1, 2, 3, 4, 5, 6, 2, 3], 3, 2, 3, (4, 5, 6)),  # the longest suffix that occurs is 2 long
        ([5, 1, 7, 1, 8, 1], 2, 1, 1, (8,)),  # the latest earlier occurrence wins
        ([1, 2, 3, 4], 3, 1, 4, ()),  # 4 occurs nowhere earlier
        ([1, 2, 1, 2], 2, 2, 4, (1, 2)),  # proposals stop at the end of what is known
        ([7], 3, 1, 2, ()),
    ],
)
def test_ngram_lookup(tokens: list[int], max_n: int, min_n: int, k: int, expected: tuple[int, ...]) -> None:
    assert lookup(np.array(tokens, dtype=np.int64), max_n, min_n, k) == expected


def test_the_token_buffer_grows_with_the_sequence() -> None:
    buffer, tokens = TokenBuffer(), list(range(3000))
    assert buffer.sync(tokens, 10).tolist() == tokens[:10]
    assert buffer.sync(tokens, 3000).tolist() == tokens


def scheduler(num_blocks: int = 32, budget: int = 64, max_batch: int = 4) -> Scheduler:
    limits = SchedulerLimits(8, 16, max_batched_tokens=budget, max_prefill_chunk=32, max_speculating_batch=max_batch)
    return Scheduler(limits, BlockManager(num_blocks, 4))


def speculating(rid: str, prompt: list[int], max_tokens: int = 4, room: int = 40) -> Sequence:
    spec = Speculation(max_tokens=max_tokens, acceptance=0.99)
    return Sequence(rid, prompt, cache_salt="t", max_num_tokens=len(prompt) + room, speculation=spec)


def test_a_sampling_step_reserves_slots_and_rejected_ones_roll_back() -> None:
    sched = scheduler()
    seq = speculating("a", list(range(10, 16)))
    sched.add(seq)
    item = sched.schedule().sequences[0]  # the prompt, then 4 proposal slots
    assert item.samples and item.num_speculative == 4 and seq.num_computed_tokens == 6
    assert len(item.block_ids) == 3  # 6 tokens + 4 slots in blocks of 4
    sched.update(seq, item, 50, accepted=[40, 41])
    assert seq.token_ids[6:] == [40, 41, 50]
    assert seq.num_computed_tokens == 8  # the last prompt token and the two accepted proposals have KV
    assert len(seq.block_ids) == 3  # 9 tokens need 3 blocks: the slot of the rejected ones is back
    plan = sched.schedule()
    assert plan.sequences[0].first_position == 8 and plan.sequences[0].token_ids == (50,)
    sched.update(seq, plan.sequences[0], 51)  # none accepted
    assert seq.num_computed_tokens == 9 and len(seq.block_ids) == 3


def test_tail_blocks_of_rejected_slots_are_freed() -> None:
    sched = scheduler(num_blocks=16)
    seq = speculating("a", list(range(10, 14)))  # 4 tokens: a full block
    sched.add(seq)
    item = sched.schedule().sequences[0]
    assert len(item.block_ids) == 2  # the prompt's block and one for the slots
    free = sched.blocks.num_free_blocks
    sched.update(seq, item, 50)  # nothing accepted: 5 tokens still need 2 blocks
    assert len(seq.block_ids) == 2 and sched.blocks.num_free_blocks == free
    item = sched.schedule().sequences[0]
    assert len(item.block_ids) == 3
    sched.update(seq, item, 51)  # 6 tokens: 2 blocks; the third goes back
    assert len(seq.block_ids) == 2 and sched.blocks.num_free_blocks == free


def test_slots_fit_the_budget_the_token_cap_and_the_batch() -> None:
    sched = scheduler(budget=8)
    seq = speculating("a", list(range(10, 16)), max_tokens=8)
    sched.add(seq)
    assert sched.schedule().sequences[0].num_speculative == 2  # 6 prompt tokens of a budget of 8
    capped = Sequence("c", [1, 2, 3], cache_salt="t", max_num_tokens=5, speculation=Speculation(8, acceptance=0.99))
    sched = scheduler()
    sched.add(capped)
    assert sched.schedule().sequences[0].num_speculative == 1  # 3 + 1 slot + the target's own = 5
    sched = scheduler(max_batch=1)
    for rid in ("x", "y"):
        sched.add(speculating(rid, [1, 2, 3]))
    sched.schedule()  # both admitted
    assert all(item.num_speculative == 0 for item in sched.schedule().sequences)  # 2 running > 1


def test_slots_never_take_the_blocks_others_need() -> None:
    sched = scheduler(num_blocks=3)
    seq = speculating("a", [1, 2, 3, 4, 5, 6, 7], room=5)  # 2 blocks; slots would need a third
    other = Sequence("b", [9], cache_salt="t")
    sched.add(seq)
    sched.add(other)
    plan = sched.schedule()
    assert {item.request_id: item.num_speculative for item in plan.sequences} == {"a": 0, "b": 0}
    assert not plan.preempted


def test_a_prefill_chunk_that_does_not_sample_gets_no_slots() -> None:
    sched = scheduler(budget=4)
    seq = speculating("a", list(range(10, 20)))
    sched.add(seq)
    assert sched.schedule().sequences[0].num_speculative == 0  # the first 4 of 10 prompt tokens


def test_proposal_slots_are_not_counted_as_prompt_tokens() -> None:
    """The load meter's prefill rate (what admission estimates waits from) sees prompt tokens only."""
    decode = ScheduledSequence("a", 9, (7,), (0, 1, 2), samples=True, num_speculative=4)
    chunk = ScheduledSequence("b", 0, tuple(range(8)), (3, 4), samples=True, num_speculative=2)
    plan = SchedulerPlan((decode, chunk), ())
    assert prefill_tokens(plan) == 8 and plan.num_batched_tokens == 15


def test_drafts_ride_on_the_plan_within_their_slots() -> None:
    item = ScheduledSequence("a", 5, (7,), (0, 1), samples=True, num_speculative=3)
    plan = with_drafts(SchedulerPlan((item,), ()), {"a": Proposal((8, 9))})
    assert plan.sequences[0].token_ids == (7, 8, 9) and plan.sequences[0].num_logits_rows == 3
    assert plan.num_batched_tokens == 4  # the token and its 3 slots, whatever was proposed
    with pytest.raises(ValueError, match="slots"):
        with_drafts(SchedulerPlan((item,), ()), {"a": Proposal((1, 2, 3, 4))})
