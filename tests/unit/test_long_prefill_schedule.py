"""A long prefill beside running decodes takes a fair share of each step: its chunk shrinks as
its context grows (`max_prefill_attention`), and alone it takes whole chunks."""

from __future__ import annotations

from museserve.engine.block_manager import BlockManager
from museserve.engine.scheduler import SchedulerLimits
from museserve.engine.sequence import Sequence
from tests.indexed_scheduler import IndexedScheduler

CHUNK = 512
ATTENTION = 512 * 2048  # a full chunk until 2,048 tokens are computed


def scheduler() -> IndexedScheduler:
    limits = SchedulerLimits(
        max_running=8,
        max_waiting=8,
        max_batched_tokens=2048,
        max_prefill_chunk=CHUNK,
        max_prefill_attention=ATTENTION,
        min_prefill_chunk=16,
    )
    return IndexedScheduler(limits, BlockManager(4096, 16))


def run(sched: IndexedScheduler, steps: int) -> list[dict[str, int]]:
    """Each step's new tokens per request; sampled tokens are 7."""
    shares = []
    for _ in range(steps):
        plan = sched.schedule()
        shares.append({item.request_id: item.num_new_tokens for item in plan.sequences})
        sched.update_plan(plan, {item.request_id: 7 for item in plan.sequences if item.samples})
    return shares


def test_alone_a_long_prompt_takes_whole_chunks() -> None:
    sched = scheduler()
    sched.add(Sequence("long", [5] * 20_000, cache_salt="t"))
    assert [s["long"] for s in run(sched, 10)] == [CHUNK] * 10


def test_beside_decodes_the_chunk_shrinks_with_the_context_and_decodes_run_every_step() -> None:
    sched = scheduler()
    sched.add(Sequence("decode", [5] * 8, cache_salt="t"))
    run(sched, 1)
    sched.add(Sequence("long", [5] * 40_000, cache_salt="t"))
    shares = run(sched, 40)
    assert all(s["decode"] == 1 for s in shares)
    computed = 0
    for share in shares:
        expected = CHUNK if computed == 0 else max(16, min(CHUNK, ATTENTION // computed))
        assert share["long"] == expected
        computed += share["long"]
    assert shares[-1]["long"] < CHUNK // 4  # deep into the prompt: a small share per step
