from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from museserve.engine.block_manager import BlockManager
from museserve.engine.plan import ScheduledSequence, SchedulerPlan
from museserve.engine.scheduler import SchedulerLimits
from museserve.engine.sequence import Sequence, SequenceStatus
from museserve.errors import ErrorCode, InvalidArgument, ResourceExhausted
from tests.indexed_scheduler import IndexedScheduler


def make_scheduler(
    *,
    num_blocks: int = 64,
    block_size: int = 4,
    max_running: int = 8,
    max_waiting: int = 64,
    max_batched_tokens: int = 64,
    max_prefill_chunk: int = 64,
    prefix_caching: bool = True,
) -> IndexedScheduler:
    limits = SchedulerLimits(
        max_running=max_running,
        max_waiting=max_waiting,
        max_batched_tokens=max_batched_tokens,
        max_prefill_chunk=max_prefill_chunk,
    )
    return IndexedScheduler(limits, BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching))


def submit(
    sched: IndexedScheduler, rid: str, tokens: list[int] | range, *, priority: int = 0, salt: str = "tenant-a"
) -> Sequence:
    seq = Sequence(rid, list(tokens), cache_salt=salt, priority=priority)
    sched.add(seq)
    return seq


@dataclass
class Engine:
    """Plays the engine: schedule, "run" the plan, sample 1000 + step, update."""

    sched: IndexedScheduler
    steps: int = 0

    def step(self) -> SchedulerPlan:
        plan = self.sched.schedule()
        sampled = {s.request_id: self.token() for s in plan.sequences if s.samples}
        self.sched.update_plan(plan, sampled)
        self.steps += 1
        return plan

    def token(self) -> int:
        return 1000 + self.steps


def entry(plan: SchedulerPlan, rid: str) -> ScheduledSequence | None:
    return next((s for s in plan.sequences if s.request_id == rid), None)


def shape(plan: SchedulerPlan) -> dict[str, tuple[int, int, bool]]:
    return {s.request_id: (s.first_position, s.num_new_tokens, s.samples) for s in plan.sequences}


def held_refs(sched: IndexedScheduler) -> int:
    return sum(sched.blocks.ref_count(b) for b in range(sched.blocks.num_blocks))


# -- a single request ------------------------------------------------------------------


def test_single_request_prefills_in_chunks_then_decodes() -> None:
    sched = make_scheduler(block_size=4, max_prefill_chunk=4)
    engine = Engine(sched)
    seq = submit(sched, "a", range(10))
    expected = [(0, 4, False), (4, 4, False), (8, 2, True), (10, 1, True), (11, 1, True), (12, 1, True)]
    previous_blocks: tuple[int, ...] = ()
    for first, num_new, samples in expected:
        plan = engine.step()
        assert shape(plan) == {"a": (first, num_new, samples)}
        item = plan.sequences[0]
        assert list(item.token_ids) == seq.token_ids[first : first + num_new]
        assert len(item.block_ids) == sched.blocks.blocks_for(first + num_new)
        assert item.block_ids[: len(previous_blocks)] == previous_blocks  # blocks only grow
        previous_blocks = item.block_ids
        assert plan.preempted == ()
    assert seq.token_ids == list(range(10)) + [1002, 1003, 1004, 1005]
    assert seq.num_prompt_tokens == 10
    assert seq.num_output_tokens == 4
    assert seq.num_computed_tokens == 13
    assert seq.status is SequenceStatus.RUNNING


def test_budget_smaller_than_chunk_limits_each_prefill_step() -> None:
    sched = make_scheduler(max_batched_tokens=3, max_prefill_chunk=4)
    engine = Engine(sched)
    submit(sched, "a", range(7))
    assert [shape(engine.step())["a"] for _ in range(4)] == [(0, 3, False), (3, 3, False), (6, 1, True), (7, 1, True)]


def test_empty_scheduler_plans_nothing() -> None:
    sched = make_scheduler()
    plan = sched.schedule()
    assert plan.is_empty
    assert plan.num_batched_tokens == 0
    assert not sched.has_work()


# -- the step's token budget -----------------------------------------------------------


def test_budget_mixes_decodes_with_new_prefill_chunks() -> None:
    sched = make_scheduler(max_batched_tokens=8, max_prefill_chunk=6)
    engine = Engine(sched)
    submit(sched, "a", range(3))
    assert shape(engine.step()) == {"a": (0, 3, True)}
    submit(sched, "b", range(100, 120))
    submit(sched, "c", range(200, 205))
    plan = engine.step()
    assert shape(plan) == {"a": (3, 1, True), "b": (0, 6, False), "c": (0, 1, False)}
    assert plan.sequences[0].request_id == "a"  # running sequences are planned first
    assert plan.num_batched_tokens == 8
    for _ in range(10):
        plan = engine.step()
        assert plan.num_batched_tokens <= 8
        assert all(s.num_new_tokens <= 6 for s in plan.sequences)
        assert shape(plan)["a"][1] == 1  # the decode is never squeezed out by prefills


def test_budget_caps_decodes_too() -> None:
    sched = make_scheduler(max_batched_tokens=2, max_running=4)
    engine = Engine(sched)
    for i in range(4):
        submit(sched, f"r{i}", [i])
    for _ in range(6):
        plan = engine.step()
        assert plan.num_batched_tokens == 2
        assert [s.num_new_tokens for s in plan.sequences] == [1, 1]


# -- admission limits and errors -------------------------------------------------------


def test_max_running_caps_the_batch() -> None:
    sched = make_scheduler(max_running=2)
    engine = Engine(sched)
    for rid in "abc":
        submit(sched, rid, range(5))
    plan = engine.step()
    assert set(shape(plan)) == {"a", "b"}
    assert (sched.num_running, sched.num_waiting) == (2, 1)
    assert set(shape(engine.step())) == {"a", "b"}
    sched.finish("a")
    assert set(shape(engine.step())) == {"b", "c"}
    assert sched.get("c").status is SequenceStatus.RUNNING


def test_full_queue_is_resource_exhausted() -> None:
    sched = make_scheduler(max_waiting=2)
    submit(sched, "a", [1])
    submit(sched, "b", [2])
    with pytest.raises(ResourceExhausted) as info:
        submit(sched, "c", [3])
    assert info.value.code is ErrorCode.RESOURCE_EXHAUSTED
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    assert sched.get("c") is None
    assert sched.num_waiting == 2
    sched.schedule()  # admits both: the queue has room again
    assert sched.num_waiting == 0
    submit(sched, "c", [3])
    assert sched.num_waiting == 1


def test_prompt_that_cannot_fit_the_cache_is_invalid() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)
    for length in (17, 16):  # 16 tokens fill the cache and leave no room for an output token
        with pytest.raises(InvalidArgument) as info:
            submit(sched, f"big{length}", range(length))
        assert info.value.field == "messages"
        assert info.value.code is ErrorCode.INVALID_ARGUMENT
        assert sched.get(f"big{length}") is None
    submit(sched, "ok", range(15))
    assert sched.num_waiting == 1


def test_request_whose_output_could_outgrow_the_cache_is_invalid() -> None:
    """Admitted, it would preempt itself forever once its tokens filled the whole cache."""
    sched = make_scheduler(num_blocks=4, block_size=4)
    with pytest.raises(InvalidArgument) as info:
        sched.add(Sequence("long-output", list(range(8)), cache_salt="t", max_num_tokens=17))
    assert info.value.field == "sampling.max_output_tokens"
    sched.add(Sequence("fits", list(range(8)), cache_salt="t", max_num_tokens=16))
    assert sched.num_waiting == 1


def test_admission_follows_priority_then_arrival() -> None:
    sched = make_scheduler(max_running=1)
    engine = Engine(sched)
    submit(sched, "late-low", [1], priority=5)
    submit(sched, "high-1", [2], priority=1)
    submit(sched, "high-2", [3], priority=1)
    submit(sched, "top", [4], priority=0)
    order = []
    while sched.has_work():
        plan = engine.step()
        (item,) = plan.sequences
        order.append(item.request_id)
        sched.finish(item.request_id)
    assert order == ["top", "high-1", "high-2", "late-low"]


def test_spent_budget_skips_remaining_running_sequences() -> None:
    sched = make_scheduler(max_batched_tokens=4, max_prefill_chunk=4)
    engine = Engine(sched)
    submit(sched, "decode", [1], priority=1)
    engine.step()
    submit(sched, "prefill", range(100, 120), priority=0)
    assert shape(engine.step()) == {"decode": (1, 1, True), "prefill": (0, 3, False)}
    plan = engine.step()  # the higher-priority prefill chunk takes the whole budget
    assert shape(plan) == {"prefill": (3, 4, False)}


def test_running_decodes_take_the_budget_before_waiting_requests() -> None:
    sched = make_scheduler(max_batched_tokens=1, max_running=4)
    engine = Engine(sched)
    submit(sched, "low", [1], priority=3)
    engine.step()
    submit(sched, "high", [2], priority=0)
    engine.step()  # the budget went to "low"'s decode: "high" still waits
    assert sched.get("high").status is SequenceStatus.WAITING
    sched.finish("low")
    assert set(shape(engine.step())) == {"high"}


def test_later_higher_priority_request_is_kept_over_an_earlier_one() -> None:
    sched = make_scheduler(num_blocks=5, block_size=2)
    engine = Engine(sched)
    submit(sched, "low", [1, 2, 3, 4], priority=5)
    engine.step()
    submit(sched, "high", [5, 6, 7, 8], priority=0)
    assert shape(engine.step()) == {"low": (4, 1, True), "high": (0, 4, True)}
    assert [seq.request_id for seq in sched.running] == ["high", "low"]
    plan = engine.step()  # "high" needs a third block: "low" makes room although it came first
    assert plan.preempted == ("low",)
    assert shape(plan) == {"high": (4, 1, True)}


def test_head_of_line_blocks_smaller_requests_behind_it() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)
    engine = Engine(sched)
    submit(sched, "a", range(9))  # three blocks
    engine.step()
    submit(sched, "big", range(100, 105))  # two blocks: does not fit the one left
    submit(sched, "small", range(200, 202))  # one block: would fit, but waits its turn
    plan = engine.step()
    assert set(shape(plan)) == {"a"}
    assert sched.num_waiting == 2
    assert sched.blocks.num_free_blocks == 1
    sched.finish("a")
    plan = engine.step()
    assert shape(plan) == {"big": (0, 5, True), "small": (0, 2, True)}


# -- preemption ------------------------------------------------------------------------


def test_preemption_evicts_lowest_priority_and_resume_recomputes_outputs() -> None:
    sched = make_scheduler(num_blocks=6, block_size=2)
    engine = Engine(sched)
    a = submit(sched, "a", [0, 1, 2, 3], priority=0)
    b = submit(sched, "b", [10, 11, 12], priority=5)
    c = submit(sched, "c", [20, 21, 22, 23], priority=1)

    plan = engine.step()
    assert [s.request_id for s in plan.sequences] == ["a", "c", "b"]
    assert sched.blocks.num_free_blocks == 0
    assert b.token_ids == [10, 11, 12, 1000]

    # "a" and "c" need a third block each; "b" (lowest priority) makes room.
    plan = engine.step()
    assert plan.preempted == ("b",)
    assert shape(plan) == {"a": (4, 1, True), "c": (4, 1, True)}
    assert b.status is SequenceStatus.WAITING
    assert b.block_ids == []
    assert b.num_computed_tokens == 0
    assert b.num_preemptions == 1
    assert (sched.num_running, sched.num_waiting) == (2, 1)
    assert held_refs(sched) == len(a.block_ids) + len(c.block_ids) == 6

    plan = engine.step()  # still no room for "b"
    assert set(shape(plan)) == {"a", "c"}
    assert plan.preempted == ()
    sched.finish("a")

    plan = engine.step()
    item = entry(plan, "b")
    assert item is not None
    # The whole prompt and the token generated before preemption are computed again.
    assert (item.first_position, item.num_new_tokens, item.samples) == (0, 4, True)
    assert item.token_ids == (10, 11, 12, 1000)
    assert b.token_ids == [10, 11, 12, 1000, 1000 + engine.steps - 1]
    assert b.num_preemptions == 1
    assert b.num_cached_tokens == 0


def test_preempted_sequence_resumes_from_surviving_prefix_blocks() -> None:
    sched = make_scheduler(num_blocks=7, block_size=2)
    engine = Engine(sched)
    a = submit(sched, "a", [10, 11, 12, 13], priority=0)
    c = submit(sched, "c", [20, 21, 22, 23], priority=1)
    for _ in range(3):
        assert engine.step().preempted == ()
    assert c.token_ids == [20, 21, 22, 23, 1000, 1001, 1002]
    head = c.block_ids[:2]
    hits_before = sched.blocks.prefix_hits

    plan = engine.step()  # one free block left: "a" takes it, "c" gives up its own
    assert plan.preempted == ("c",)
    assert set(shape(plan)) == {"a"}
    assert c.block_ids == []
    assert c.status is SequenceStatus.WAITING

    engine.step()  # "c" cannot come back yet
    engine.step()  # "a" grows into the block "c" freed first (its tail), evicting it
    assert c.status is SequenceStatus.WAITING
    assert len(a.block_ids) == 5
    sched.finish("a")

    plan = engine.step()
    item = entry(plan, "c")
    assert item is not None
    # Its two head blocks survived; the evicted tail (two generated tokens) and the last
    # generated token are recomputed.
    assert (item.first_position, item.num_new_tokens, item.samples) == (4, 3, True)
    assert item.token_ids == (1000, 1001, 1002)
    assert list(item.block_ids[:2]) == head
    assert c.num_cached_tokens == 0  # only the first admission counts
    assert sched.blocks.prefix_hits == hits_before
    assert c.num_preemptions == 1


def test_lowest_priority_sequence_preempts_only_itself() -> None:
    sched = make_scheduler(num_blocks=3, block_size=2, max_batched_tokens=4, max_prefill_chunk=8)
    engine = Engine(sched)
    a = submit(sched, "a", [1, 2, 3], priority=0)
    low = submit(sched, "low", [4, 5, 6, 7, 8], priority=1)
    assert shape(engine.step()) == {"a": (0, 3, True), "low": (0, 1, False)}
    assert sched.blocks.num_free_blocks == 0
    plan = engine.step()  # low's next chunk needs a block: it gives up its own, "a" keeps running
    assert plan.preempted == ("low",)
    assert shape(plan) == {"a": (3, 1, True)}
    assert a.status is SequenceStatus.RUNNING
    assert low.status is SequenceStatus.WAITING
    assert low.num_preemptions == 1
    assert a.num_preemptions == 0


def test_no_admission_in_a_step_that_preempted() -> None:
    sched = make_scheduler(num_blocks=4, block_size=2)
    engine = Engine(sched)
    submit(sched, "a", [1, 2, 3, 4], priority=0)
    submit(sched, "b", [5, 6, 7, 8], priority=1)
    engine.step()
    submit(sched, "urgent", [9], priority=0)
    plan = engine.step()
    assert plan.preempted == ("b",)
    assert set(shape(plan)) == {"a"}  # "urgent" would fit a freed block but waits a step
    assert set(shape(engine.step())) == {"a", "urgent"}


def test_cached_tokens_are_recorded_at_first_admission() -> None:
    sched = make_scheduler(block_size=4)
    engine = Engine(sched)
    submit(sched, "first", range(9))
    engine.step()
    sched.finish("first")
    second = submit(sched, "second", list(range(8)) + [50, 51])
    other_tenant = submit(sched, "other", list(range(8)) + [50, 51], salt="tenant-b")
    plan = engine.step()
    assert shape(plan)["second"] == (8, 2, True)
    assert shape(plan)["other"] == (0, 10, True)
    assert second.num_cached_tokens == 8
    assert other_tenant.num_cached_tokens == 0
    assert sched.blocks.prefix_hits == 8
    assert sched.blocks.prefix_queries == 9 + 10 + 10


def test_finishing_a_waiting_request_keeps_admission_order() -> None:
    sched = make_scheduler(max_running=1)
    engine = Engine(sched)
    for rid, priority in [("p0", 0), ("p5", 5), ("p1", 1), ("p6", 6), ("p7", 7), ("p2", 2)]:
        submit(sched, rid, [priority + 1], priority=priority)
    sched.finish("p0")
    order = []
    while sched.has_work():
        (item,) = engine.step().sequences
        order.append(item.request_id)
        sched.finish(item.request_id)
    assert order == ["p1", "p2", "p5", "p6", "p7"]


# -- finishing -------------------------------------------------------------------------


def test_finish_frees_running_and_waiting_requests() -> None:
    sched = make_scheduler(num_blocks=8, block_size=4, max_running=1)
    engine = Engine(sched)
    submit(sched, "run", range(9))
    submit(sched, "wait", range(100, 104))
    engine.step()
    assert sched.blocks.num_free_blocks == 5

    done = sched.finish("run")
    assert done is not None and done.status is SequenceStatus.FINISHED
    assert done.block_ids == []
    assert sched.blocks.num_free_blocks == 8
    assert sched.get("run") is None

    waiting = sched.finish("wait")
    assert waiting is not None and waiting.status is SequenceStatus.FINISHED
    assert sched.num_waiting == 0
    assert not sched.has_work()
    assert engine.step().is_empty

    assert sched.finish("unknown") is None
    assert sched.finish("run") is None
    assert sched.blocks.num_free_blocks == 8


def test_finish_of_a_preempted_request_removes_it_from_the_queue() -> None:
    sched = make_scheduler(num_blocks=4, block_size=2)
    engine = Engine(sched)
    submit(sched, "a", [1, 2, 3, 4], priority=0)
    submit(sched, "b", [5, 6, 7, 8], priority=1)
    engine.step()
    assert engine.step().preempted == ("b",)
    sched.finish("b")
    assert sched.num_waiting == 0
    for _ in range(3):
        assert set(shape(engine.step())) == {"a"}
    sched.finish("a")
    assert sched.blocks.num_free_blocks == 4
    assert held_refs(sched) == 0


def test_reused_request_id_does_not_inherit_the_old_prefix() -> None:
    sched = make_scheduler(block_size=4)
    engine = Engine(sched)
    submit(sched, "a", range(9))
    engine.step()
    sched.finish("a")
    fresh = submit(sched, "a", range(100, 109))
    assert shape(engine.step()) == {"a": (0, 9, True)}
    assert fresh.num_cached_tokens == 0
    assert sched.blocks.prefix_hits == 0


def test_update_ignores_requests_finished_during_the_step() -> None:
    sched = make_scheduler(block_size=4)
    a = submit(sched, "a", range(5))
    b = submit(sched, "b", range(10, 15))
    plan = sched.schedule()
    sched.finish("a")
    reused_id = submit(sched, "a", range(20, 23))  # same id, new request, while the step ran
    sched.update_plan(plan, {"b": 7})  # no token for the finished one
    assert a.token_ids == list(range(5))
    assert a.num_computed_tokens == 0
    assert reused_id.num_computed_tokens == 0
    assert reused_id.token_ids == list(range(20, 23))
    assert reused_id.status is SequenceStatus.WAITING
    assert b.token_ids == list(range(10, 15)) + [7]
    assert b.num_computed_tokens == 5
    assert held_refs(sched) == len(b.block_ids)


# -- a long randomized run -------------------------------------------------------------


@dataclass
class Request:
    rid: str
    tokens: list[int]
    salt: str
    priority: int
    max_outputs: int
    outputs: list[int] = field(default_factory=list)


def check_plan(sched: IndexedScheduler, plan: SchedulerPlan) -> None:
    limits = sched.limits
    assert plan.num_batched_tokens <= limits.max_batched_tokens
    assert len(plan.sequences) <= limits.max_running
    rids = [s.request_id for s in plan.sequences]
    assert len(rids) == len(set(rids))
    assert not set(rids) & set(plan.preempted)
    for item in plan.sequences:
        seq = sched.get(item.request_id)
        assert seq is not None and seq.status is SequenceStatus.RUNNING
        assert item.num_new_tokens >= 1
        assert item.num_new_tokens <= max(1, limits.max_prefill_chunk)
        end = item.first_position + item.num_new_tokens
        assert end == seq.num_computed_tokens  # planned tokens count as computed at once
        assert end <= len(seq.token_ids)
        assert item.samples == (end == len(seq.token_ids)) == (seq.num_pending == 1)
        assert list(item.token_ids) == seq.token_ids[item.first_position : end]
        assert item.block_ids == tuple(seq.block_ids)
        assert len(item.block_ids) >= sched.blocks.blocks_for(end)
    for rid in plan.preempted:
        seq = sched.get(rid)
        assert seq is not None and seq.status is SequenceStatus.WAITING


def check_state(sched: IndexedScheduler, live: dict[str, Request]) -> None:
    blocks = sched.blocks
    held = Counter(b for seq in sched.running for b in seq.block_ids)
    for block_id in range(blocks.num_blocks):
        assert blocks.ref_count(block_id) == held[block_id], block_id
    assert held_refs(sched) == sum(len(seq.block_ids) for seq in sched.running)
    assert blocks.num_free_blocks == sum(1 for b in range(blocks.num_blocks) if blocks.ref_count(b) == 0)
    assert sched.num_running <= sched.limits.max_running
    assert sched.num_running + sched.num_waiting == len(live)
    for seq in sched.running:
        assert seq.status is SequenceStatus.RUNNING
        assert blocks.blocks_for(seq.num_computed_tokens) <= len(seq.block_ids)
        assert len(set(seq.block_ids)) == len(seq.block_ids)
    for request in live.values():
        seq = sched.get(request.rid)
        assert seq is not None
        assert seq.token_ids == request.tokens + request.outputs
        assert seq.num_computed_tokens <= seq.num_tokens
        if seq.status is SequenceStatus.WAITING:
            assert seq.block_ids == []
            assert seq.num_computed_tokens == 0


def check_and_write_kv(
    sched: IndexedScheduler, plan: SchedulerPlan, kv: dict[tuple[int, int], tuple[str, int]]
) -> None:
    """Every position a step attends to must hold this request's own token (and tenant);
    then the step writes the positions it computes."""
    bs = sched.blocks.block_size
    for item in plan.sequences:
        seq = sched.get(item.request_id)
        assert seq is not None
        for pos in range(item.first_position):
            slot = (item.block_ids[pos // bs], pos % bs)
            assert kv.get(slot) == (seq.cache_salt, seq.token_ids[pos]), (item.request_id, pos)
        for pos, token in enumerate(item.token_ids, start=item.first_position):
            kv[(item.block_ids[pos // bs], pos % bs)] = (seq.cache_salt, token)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_randomized_run_keeps_invariants_and_finishes(seed: int) -> None:
    rng = random.Random(seed)
    sched = make_scheduler(
        num_blocks=24, block_size=4, max_running=6, max_waiting=1000, max_batched_tokens=24, max_prefill_chunk=8
    )
    bases = [[rng.randrange(1, 50_000) for _ in range(40)] for _ in range(3)]
    pending = sorted(
        (
            (rng.randrange(300), i),
            Request(
                rid=f"req{i}",
                tokens=rng.choice(bases)[: rng.randint(1, 40)],
                salt=rng.choice(["tenant-a", "tenant-b"]),
                priority=rng.randint(0, 2),
                max_outputs=rng.randint(1, 24),
            ),
        )
        for i in range(80)
    )
    pending.reverse()
    live: dict[str, Request] = {}
    kv: dict[tuple[int, int], tuple[str, int]] = {}
    preemptions = completed = aborted = 0

    for step in range(3000):
        while pending and pending[-1][0][0] <= step:
            request = pending.pop()[1]
            submit(sched, request.rid, request.tokens, priority=request.priority, salt=request.salt)
            live[request.rid] = request
        if live and rng.random() < 0.02:  # client abort between steps
            rid = rng.choice(sorted(live))
            assert sched.finish(rid) is not None
            del live[rid]
            aborted += 1

        plan = sched.schedule()
        check_plan(sched, plan)
        preemptions += len(plan.preempted)
        check_and_write_kv(sched, plan, kv)
        if plan.sequences and rng.random() < 0.02:  # abort while the step runs
            rid = rng.choice(plan.sequences).request_id
            sched.finish(rid)
            del live[rid]
            aborted += 1
        sampled = {s.request_id: 1000 + step for s in plan.sequences if s.samples}
        sched.update_plan(plan, sampled)
        for item in plan.sequences:
            request = live.get(item.request_id)
            if request is not None and item.samples:
                request.outputs.append(sampled[item.request_id])
                if len(request.outputs) == request.max_outputs:
                    assert sched.finish(request.rid) is not None
                    del live[request.rid]
                    completed += 1
        check_state(sched, live)
        if not pending and not live:
            break
    else:
        pytest.fail(f"still running after 3000 steps: {sched.num_running} running, {sched.num_waiting} waiting")

    assert completed + aborted == 80
    assert not sched.has_work()
    assert sched.blocks.num_free_blocks == sched.blocks.num_blocks
    assert held_refs(sched) == 0
    assert preemptions > 0
    assert sched.blocks.prefix_hits > 0
