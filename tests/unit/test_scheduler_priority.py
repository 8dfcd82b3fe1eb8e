"""Priority preemption: a waiting request of a better priority that cannot start preempts the
lowest running one and starts in the same plan; worse priorities keep their share of the batch;
a preempted request resumes from its tokens and ends as it would have without the preemption."""

from __future__ import annotations

import random

from museserve.engine.block_manager import BlockManager
from museserve.engine.plan import SchedulerPlan
from museserve.engine.scheduler import SchedulerLimits
from museserve.engine.sequence import Sequence, SequenceStatus
from tests.indexed_scheduler import IndexedScheduler

LOW, HIGH = 5, 0


def make_scheduler(
    *,
    max_running: int = 4,
    num_blocks: int = 64,
    block_size: int = 4,
    share: float = 0.0,
    enabled: bool = True,
) -> IndexedScheduler:
    limits = SchedulerLimits(
        max_running=max_running,
        max_waiting=64,
        max_batched_tokens=64,
        max_prefill_chunk=64,
        priority_preemption=enabled,
        min_low_priority_share=share,
    )
    return IndexedScheduler(limits, BlockManager(num_blocks, block_size))


def submit(
    sched: IndexedScheduler, rid: str, tokens: list[int] | range, priority: int, max_outputs: int = 32
) -> Sequence:
    seq = Sequence(
        rid, list(tokens), cache_salt="tenant-a", priority=priority, max_num_tokens=len(tokens) + max_outputs
    )
    sched.add(seq)
    return seq


def model_token(seq: Sequence) -> int:
    """A deterministic "model": the next token depends on the sequence's tokens alone."""
    return 1000 + sum((i + 1) * t for i, t in enumerate(seq.token_ids)) % 997


def step(sched: IndexedScheduler) -> SchedulerPlan:
    plan = sched.schedule()
    sampled = {item.request_id: model_token(sched.get(item.request_id)) for item in plan.sequences if item.samples}
    sched.update_plan(plan, sampled)
    return plan


def shape(plan: SchedulerPlan) -> dict[str, tuple[int, int, bool]]:
    return {s.request_id: (s.first_position, s.num_new_tokens, s.samples) for s in plan.sequences}


def running_ids(sched: IndexedScheduler) -> list[str]:
    return [seq.request_id for seq in sched.running]


def test_a_better_priority_preempts_the_lowest_running_and_starts_in_the_same_plan() -> None:
    sched = make_scheduler(max_running=2)
    submit(sched, "low-a", [1, 2, 3, 4], LOW)
    low_b = submit(sched, "low-b", [5, 6, 7, 8], LOW)
    step(sched)
    submit(sched, "high", [9, 10, 11], HIGH)
    plan = step(sched)
    assert plan.preempted == ("low-b",)  # the later of the two lowest
    assert shape(plan) == {"low-a": (4, 1, True), "high": (0, 3, True)}
    assert running_ids(sched) == ["high", "low-a"]
    assert low_b.status is SequenceStatus.WAITING
    assert low_b.block_ids == [] and low_b.num_preemptions == 1
    assert sched.num_priority_preemptions == 1


def test_equal_or_worse_priorities_wait_their_turn() -> None:
    sched = make_scheduler(max_running=2)
    submit(sched, "a", [1, 2], LOW)
    submit(sched, "b", [3, 4], LOW)
    step(sched)
    submit(sched, "same", [5, 6], LOW)
    submit(sched, "worse", [7, 8], LOW + 1)
    for _ in range(3):
        plan = step(sched)
        assert plan.preempted == ()
        assert set(shape(plan)) == {"a", "b"}
    assert sched.num_priority_preemptions == 0


def test_off_unless_enabled() -> None:
    sched = make_scheduler(max_running=2, enabled=False)
    submit(sched, "a", [1, 2], LOW)
    submit(sched, "b", [3, 4], LOW)
    step(sched)
    high = submit(sched, "high", [5, 6], HIGH)
    for _ in range(3):
        assert step(sched).preempted == ()
    assert high.status is SequenceStatus.WAITING


def test_worse_priorities_keep_their_share_of_the_batch() -> None:
    sched = make_scheduler(max_running=4, share=0.5)  # 2 of 4 slots stay with the lower tier
    for rid in ("low-a", "low-b", "low-c", "low-d"):
        submit(sched, rid, [1, 2, 3], LOW)
    step(sched)
    for rid in ("high-a", "high-b", "high-c", "high-d"):
        submit(sched, rid, [4, 5, 6], HIGH)
    preempted: list[str] = []
    for _ in range(6):
        plan = step(sched)
        preempted.extend(plan.preempted)
        assert sum(1 for seq in sched.running if seq.priority == LOW) >= 2
    assert preempted == ["low-d", "low-c"]  # one head per step, lowest first
    assert running_ids(sched) == ["high-a", "high-b", "low-a", "low-b"]
    assert sched.num_waiting == 4


def test_the_share_is_floored() -> None:
    sched = make_scheduler(max_running=4, share=0.3)  # floor(1.2): one slot kept
    for rid in ("low-a", "low-b", "low-c", "low-d"):
        submit(sched, rid, [1, 2, 3], LOW)
    step(sched)
    for rid in ("high-a", "high-b", "high-c", "high-d"):
        submit(sched, rid, [4, 5, 6], HIGH)
    for _ in range(6):
        step(sched)
    assert running_ids(sched) == ["high-a", "high-b", "high-c", "low-a"]


def test_a_head_whose_blocks_do_not_fit_preempts_too() -> None:
    sched = make_scheduler(max_running=4, num_blocks=6, block_size=4)
    low = submit(sched, "low", range(16), LOW, max_outputs=4)  # four of the six blocks
    step(sched)
    assert sched.blocks.num_free_blocks == 2
    submit(sched, "high", range(100, 110), HIGH, max_outputs=4)  # three blocks: the batch has room, the cache not
    plan = step(sched)
    assert plan.preempted == ("low",)
    assert shape(plan) == {"high": (0, 10, True)}
    assert low.status is SequenceStatus.WAITING


def test_a_head_that_fits_preempts_nobody() -> None:
    sched = make_scheduler(max_running=4, num_blocks=16, block_size=4)
    submit(sched, "low", range(16), LOW)
    step(sched)
    submit(sched, "high", range(100, 110), HIGH)
    plan = step(sched)
    assert plan.preempted == ()
    assert set(shape(plan)) == {"low", "high"}


def test_a_sequence_with_a_pending_token_is_preempted_and_keeps_it() -> None:
    """Overlap: the next plan is made before the last one's tokens are back."""
    sched = make_scheduler(max_running=1)
    low = submit(sched, "low", [1, 2, 3], LOW)
    first = sched.schedule()
    assert low.num_pending == 1
    submit(sched, "high", [7, 8], HIGH)
    second = sched.schedule()  # before `first` came back
    assert second.preempted == ("low",)
    assert shape(second) == {"high": (0, 2, True)}
    sched.update_plan(first, {"low": 50})
    sched.update_plan(second, {"high": 60})
    assert low.token_ids == [1, 2, 3, 50]
    assert (low.status, low.num_pending) == (SequenceStatus.WAITING, 0)
    sched.finish("high")
    plan = sched.schedule()
    assert shape(plan) == {"low": (0, 4, True)}
    assert plan.sequences[0].token_ids == (1, 2, 3, 50)


def run_to_end(sched: IndexedScheduler, arrivals: dict[int, list[tuple[str, list[int], int]]], outputs: int) -> tuple:
    """Steps until every request made `outputs` tokens; checks every attended KV slot holds the
    request's own token. Returns the outputs by request and the priority preemptions."""
    tokens: dict[str, list[int]] = {}
    kv: dict[tuple[int, int], int] = {}
    block_size = sched.blocks.block_size
    for number in range(500):
        for rid, prompt, priority in arrivals.get(number, []):
            submit(sched, rid, prompt, priority)
            tokens[rid] = []
        plan = sched.schedule()
        for item in plan.sequences:
            seq = sched.get(item.request_id)
            for pos in range(item.first_position):
                assert kv[(item.block_ids[pos // block_size], pos % block_size)] == seq.token_ids[pos]
            for pos, token in enumerate(item.token_ids, start=item.first_position):
                kv[(item.block_ids[pos // block_size], pos % block_size)] = token
        sampled = {i.request_id: model_token(sched.get(i.request_id)) for i in plan.sequences if i.samples}
        sched.update_plan(plan, sampled)
        for rid, token in sampled.items():
            tokens[rid].append(token)
            if len(tokens[rid]) == outputs:
                sched.finish(rid)
        if not sched.has_work() and number > max(arrivals):
            return tokens, sched.num_priority_preemptions
    raise AssertionError("the requests did not finish")


def test_a_preempted_request_resumes_and_ends_as_it_would_have_unpreempted() -> None:
    rng = random.Random(7)
    lows = [(f"low-{i}", [rng.randrange(1, 500) for _ in range(rng.randint(3, 20))], LOW) for i in range(3)]
    highs = [(f"high-{i}", [rng.randrange(1, 500) for _ in range(rng.randint(3, 20))], HIGH) for i in range(3)]
    arrivals = {0: lows, 3: highs[:2], 5: highs[2:]}
    preempting, priority_preemptions = run_to_end(make_scheduler(max_running=3), arrivals, outputs=8)
    assert priority_preemptions > 0
    unpreempted, none = run_to_end(make_scheduler(max_running=3, enabled=False), arrivals, outputs=8)
    assert none == 0
    assert preempting == unpreempted
    assert all(len(out) == 8 for out in preempting.values())


def test_randomized_mix_of_kv_and_priority_preemptions_ends_as_unpreempted() -> None:
    rng = random.Random(11)
    arrivals: dict[int, list[tuple[str, list[int], int]]] = {}
    for i in range(40):
        prompt = [rng.randrange(1, 500) for _ in range(rng.randint(1, 24))]
        arrivals.setdefault(rng.randrange(15), []).append((f"r{i}", prompt, rng.randint(0, 2)))

    def scheduler(enabled: bool) -> IndexedScheduler:
        return make_scheduler(max_running=6, num_blocks=24, block_size=4, share=0.25, enabled=enabled)

    preempting = scheduler(True)
    with_priority, priority_preemptions = run_to_end(preempting, arrivals, outputs=6)
    without, _ = run_to_end(scheduler(False), arrivals, outputs=6)
    assert priority_preemptions > 0
    assert with_priority == without
    assert preempting.blocks.num_free_blocks == preempting.blocks.num_blocks
