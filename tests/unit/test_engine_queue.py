"""The engine's queue under load, over a scripted device: a request that can no longer start in
time is ended before any of its prefill runs (DEADLINE_EXCEEDED for its deadline,
RESOURCE_EXHAUSTED for its tier's TTFT objective), one that already streamed is not, a client
that leaves the queue is counted, and `load()` reports the queue as it is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future

import pytest

from museserve.config import PoolConfig
from museserve.engine.engine import MuseEngine
from museserve.engine.late_requests import LateRequests
from museserve.engine.load_meter import LoadMeter
from museserve.engine.plan import RowSampling, RowToken, SchedulerPlan
from museserve.errors import DeadlineExceeded, ResourceExhausted
from museserve.messages import PreparedRequest
from museserve.metrics import InMemoryMetrics
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from tests.support import prepared_request

ORDINARY_TOKEN = 100  # no control token: it never stops a request


class ScriptedRunner:
    """A device that answers every row with one ordinary token and records each plan it gets;
    while `hold` is set, steps wait for `release()`."""

    media_feature_dims: dict[str, int] = {}
    on_accelerator = False
    kv_tier_slots = 0

    def __init__(self, num_blocks: int = 512) -> None:
        self.num_blocks = num_blocks
        self.plans: list[SchedulerPlan] = []
        self.hold = False
        self._held: list[tuple[Future[list[RowToken]], list[RowToken]]] = []

    async def prepare(self, request: PreparedRequest) -> object:
        return None

    def submit(self, plan: SchedulerPlan, rows: list[RowSampling]) -> Future[list[RowToken]]:
        self.plans.append(plan)
        future: Future[list[RowToken]] = Future()
        tokens = [RowToken(ORDINARY_TOKEN) for _ in rows]
        if self.hold:
            self._held.append((future, tokens))
        else:
            future.set_result(tokens)
        return future

    def release(self) -> None:
        held, self._held = self._held, []
        for future, tokens in held:
            future.set_result(tokens)

    def ran(self, request_id: str) -> bool:
        return any(item.request_id == request_id for plan in self.plans for item in plan.sequences)

    def shutdown(self, wait: bool = False) -> None:
        self.release()


@pytest.fixture(scope="module")
def chat_format() -> MuseFormat:
    return MuseFormat(MuseTokenizer.load(None))


def make_engine(chat_format: MuseFormat, runner: ScriptedRunner, metrics: InMemoryMetrics, **engine) -> MuseEngine:
    settings = {
        "context_length": 4096,
        "max_output_tokens": 64,
        "default_max_output_tokens": 4,
        "max_running_requests": 4,
        "max_batched_tokens": 64,
        "max_prefill_chunk": 16,
        "block_size": 4,
        "min_context_per_request": 64,
        "stream_interval_ms": 0,
        **engine,
    }
    pool = PoolConfig(name="muse-test", model={"device": "cpu"}, engine=settings)
    return MuseEngine(pool, chat_format, runner, metrics, context_window=4096)


async def collect(engine: MuseEngine, request: PreparedRequest) -> int:
    """The output tokens the request's stream reported."""
    usage = None
    async for chunk in engine.generate(request):
        usage = chunk.usage or usage
    return usage.output_tokens


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Lets the engine's loop run until `condition` holds; fails the test past `timeout_s` (a
    liveness bound, not a speed claim)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(0.001)


def measured_at(engine: MuseEngine, tokens_per_s: float) -> None:
    """The engine's meter as if it had measured this prefill rate alone."""
    engine.meter = LoadMeter()
    engine.late = LateRequests(engine.scheduler, engine.meter)
    engine.meter.step(1.0, int(tokens_per_s))


def prompt(n: int, start: int = 200) -> list[int]:
    return list(range(start, start + n))


async def test_a_request_that_cannot_start_before_its_deadline_ends_before_its_prefill(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics)
    engine.meter.step(1.0, 100)  # measured: 100 prompt tokens per second
    deadline = time.time() + 2
    try:
        with pytest.raises(DeadlineExceeded, match=r"could not start before its deadline: .* s remained"):
            await collect(engine, prepared_request("hopeless", prompt(500), deadline_unix_s=deadline))  # 5 s
        assert await collect(engine, prepared_request("feasible", prompt(50), deadline_unix_s=deadline)) == 12
    finally:
        engine.shutdown()
    assert not runner.ran("hopeless")
    assert runner.ran("feasible")
    assert metrics.drops == {"deadline": 1}
    assert engine.stats.recent["hopeless"].phase == "cancelled"
    assert engine.stats.num_dropped == 1
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def test_a_request_that_cannot_meet_its_ttft_objective_is_told_to_retry(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics)
    engine.meter.step(1.0, 100)
    try:
        with pytest.raises(ResourceExhausted, match="time-to-first-token objective") as info:
            await collect(engine, prepared_request("slow", prompt(500), first_token_by_unix_s=time.time() + 1))
    finally:
        engine.shutdown()
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    assert not runner.ran("slow")
    assert metrics.drops == {"objective": 1}
    assert engine.stats.recent["slow"].phase == "failed"


async def test_a_cached_prefix_counts_in_the_estimate(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics)
    document = prompt(400)
    try:
        assert await collect(engine, prepared_request("turn1", document)) == 12
        measured_at(engine, 100)  # 100 tokens/s: the whole prompt would take 4 s, its new tokens 0.08 s
        deadline = time.time() + 2
        turn2 = prepared_request("turn2", [*document, 7, 8, 9, 10, 11, 12, 13, 14], deadline_unix_s=deadline)
        assert await collect(engine, turn2) == 12
        measured_at(engine, 100)  # turn2's own steps ran fast: measured at 100 tokens/s again
        other_tenant = prepared_request("other", document, tenant="tenant-b", deadline_unix_s=deadline)
        with pytest.raises(DeadlineExceeded):
            await collect(engine, other_tenant)  # the cache is per tenant
    finally:
        engine.shutdown()
    assert metrics.drops == {"deadline": 1}


async def test_a_request_whose_objective_passes_while_it_waits_is_dropped_before_its_prefill(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics, max_running_requests=1)
    runner.hold = True
    try:
        blocker = asyncio.create_task(collect(engine, prepared_request("blocker", prompt(8))))
        await until(lambda: runner.ran("blocker"), "the blocker's first step")
        queued = asyncio.create_task(
            collect(engine, prepared_request("queued", prompt(8, 600), first_token_by_unix_s=time.time() + 0.05))
        )
        await until(lambda: "queued" in engine.requests, "the queued request's admission")
        await asyncio.sleep(0.1)  # the objective passes while the blocker holds the batch
        runner.hold = False
        runner.release()
        with pytest.raises(ResourceExhausted) as info:
            await queued
        assert await blocker == 12
    finally:
        engine.shutdown()
    assert info.value.retry_after_s is not None and info.value.retry_after_s >= 1.0
    assert not runner.ran("queued")
    assert metrics.drops == {"objective": 1}


async def test_without_a_measured_rate_only_a_passed_time_drops(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics)
    soon = time.time() + 30
    try:
        assert await collect(engine, prepared_request("long", prompt(1000), first_token_by_unix_s=soon)) == 12
        with pytest.raises(ResourceExhausted, match="passed"):
            await collect(engine, prepared_request("late", prompt(8), first_token_by_unix_s=time.time() - 1))
    finally:
        engine.shutdown()
    assert metrics.drops == {"objective": 1}


async def test_a_request_that_already_streamed_is_not_dropped_for_its_objective(chat_format) -> None:
    """Preempted by a better tier after its first token, it waits past its objective and still ends normally."""
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics, max_running_requests=1, priority_preemption=True)
    runner.hold = True
    objective = time.time() + 0.2
    low_request = prepared_request("low", prompt(8), priority=5, max_output_tokens=4, first_token_by_unix_s=objective)
    try:
        low = asyncio.create_task(collect(engine, low_request))
        await until(lambda: runner.ran("low"), "low's prefill")
        runner.release()  # its first token
        await until(lambda: len(runner.plans) == 2, "low's first decode")
        high = asyncio.create_task(collect(engine, prepared_request("high", prompt(8, 600), max_output_tokens=2)))
        await until(lambda: "high" in engine.requests, "high's admission")
        runner.release()
        await until(lambda: len(runner.plans) == 3, "high's prefill")
        assert runner.plans[2].preempted == ("low",)
        assert [item.request_id for item in runner.plans[2].sequences] == ["high"]
        await asyncio.sleep(max(0.0, objective - time.time()) + 0.05)  # low waits past its objective
        runner.hold = False
        runner.release()
        assert await high == 2
        assert await low == 4
    finally:
        engine.shutdown()
    assert metrics.drops == {}
    assert metrics.preemptions == {"priority": 1}


async def test_a_client_that_leaves_the_queue_is_counted_as_gone(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics, max_running_requests=1)
    runner.hold = True
    try:
        running = asyncio.create_task(collect(engine, prepared_request("running", prompt(8))))
        await until(lambda: runner.ran("running"), "the running request's first step")
        queued = asyncio.create_task(collect(engine, prepared_request("queued", prompt(8, 600))))
        await until(lambda: "queued" in engine.requests, "the queued request's admission")
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert "queued" not in engine.requests
        running.cancel()  # a client leaving a started request is no drop
        await asyncio.gather(running, return_exceptions=True)
    finally:
        engine.shutdown()
    assert not runner.ran("queued")
    assert metrics.drops == {"client_gone": 1}
    assert engine.stats.recent["queued"].phase == "cancelled"
    assert engine.stats.recent["running"].phase == "cancelled"
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def test_load_reports_the_queue_by_priority_and_the_prefill_backlog(chat_format) -> None:
    runner, metrics = ScriptedRunner(), InMemoryMetrics()
    engine = make_engine(chat_format, runner, metrics, max_running_requests=1)
    runner.hold = True
    try:
        tasks = [asyncio.create_task(collect(engine, prepared_request("a", prompt(100), priority=1)))]
        await until(lambda: runner.ran("a"), "a's first chunk")  # 16 of its 100 prompt tokens
        for rid, n, priority in (("b", 30, 2), ("c", 20, 2), ("d", 12, 1)):
            tasks.append(
                asyncio.create_task(collect(engine, prepared_request(rid, prompt(n, 1000), priority=priority)))
            )
        await until(lambda: len(engine.requests) == 4, "every admission")
        load = engine.load()
        assert (load.running, load.waiting, load.max_running) == (1, 3, 1)
        assert load.prefill_backlog_tokens == 84
        # Class 1 started "a" (its queue wait measured); class 2 has started nothing yet.
        classes = [(c.priority, c.running, c.waiting, c.waiting_tokens) for c in load.by_priority]
        assert classes == [(1, 1, 1, 12), (2, 0, 2, 50)]
        assert load.by_priority[0].queue_p90_s > 0.0 and load.by_priority[1].queue_p90_s == 0.0
        assert 0.0 < load.kv_usage <= 1.0
        assert load.taken_at == pytest.approx(time.time(), abs=5)
        runner.hold = False
        runner.release()
        assert await asyncio.gather(*tasks) == [12, 12, 12, 12]
        idle = engine.load()
    finally:
        engine.shutdown()
    assert (idle.running, idle.waiting, idle.prefill_backlog_tokens, idle.by_priority) == (0, 0, 0, ())
    assert idle.prefill_tokens_per_s > 0 and idle.step_s > 0
    assert 0 < idle.finishes_per_s <= 4.0  # four finishes over at least a second
    assert idle.ttft_p90_s > 0
