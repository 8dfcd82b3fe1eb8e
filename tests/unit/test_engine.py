"""The engine against a plain full-recompute decode of the same weights, token for token."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import pytest
import torch

from museserve.config import PoolConfig
from museserve.engine.block_manager import BlockManager
from museserve.engine.engine import MuseEngine
from museserve.engine.request_state import RequestState
from museserve.engine.scheduler import SchedulerLimits
from museserve.engine.sequence import Sequence
from museserve.errors import DeadlineExceeded
from museserve.messages import PreparedRequest
from museserve.metrics import InMemoryMetrics
from museserve.model.muse import MuseForCausalLM
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.kv_pool import PagedKVPool
from museserve.runner.loading import load_pool_model
from museserve.runner.model_runner import ModelRunner
from tests.indexed_scheduler import IndexedScheduler
from tests.reference_kv_cache import SequenceKVCache, reference_logits
from tests.support import prepared_request


def pool_config(**engine) -> PoolConfig:
    defaults = {
        "context_length": 20_000,
        "max_output_tokens": 256,
        "default_max_output_tokens": 16,
        "max_running_requests": 8,
        "max_waiting_requests": 16,
        "max_batched_tokens": 64,
        "max_prefill_chunk": 24,
        "block_size": 4,
        "kv_cache_bytes": 1 << 20,  # 2048 tokens: preemption under load
        "min_context_per_request": 1024,
        "stream_interval_ms": 0,
    }
    return PoolConfig(name="muse-test", model={"device": "cpu"}, engine={**defaults, **engine})


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def model(tokenizer: MuseTokenizer) -> MuseForCausalLM:
    return load_pool_model(pool_config(), tokenizer.vocab_size)


def random_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32, 8000) for _ in range(n)]  # ordinary tokens: no control ids


@torch.inference_mode()
def greedy_reference(model: MuseForCausalLM, prompt: list[int], n: int) -> list[int]:
    """Full recompute of every step over the whole sequence: no cache at all."""
    tokens = list(prompt)
    for _ in range(n):
        cache = SequenceKVCache.for_model(model.config)
        logits = reference_logits(model, torch.tensor(tokens), torch.arange(len(tokens)), cache)
        tokens.append(int(logits[-1].argmax()))
    return tokens[len(prompt) :]


def run_core(model: MuseForCausalLM, prompts: dict[str, list[int]], n: int, *, num_blocks: int, late: dict) -> tuple:
    """Scheduler + block manager + paged runner, greedy, as the engine loop drives them."""
    blocks = BlockManager(num_blocks, 4)
    scheduler = IndexedScheduler(SchedulerLimits(8, 16, max_batched_tokens=40, max_prefill_chunk=16), blocks)
    pool = PagedKVPool(model.config, num_blocks, 4, dtype=torch.float32, device=torch.device("cpu"))
    runner = ModelRunner(model, pool)
    for rid, prompt in prompts.items():
        scheduler.add(Sequence(rid, prompt, cache_salt="tenant-a"))
    outputs: dict[str, list[int]] = {rid: [] for rid in [*prompts, *late]}
    preemptions, step = 0, 0
    while scheduler.has_work():
        plan = scheduler.schedule()
        preemptions += len(plan.preempted)
        logits = runner.execute(plan)
        sampling = [item.request_id for item in plan.sequences if item.samples]
        sampled = {rid: int(logits[i].argmax()) for i, rid in enumerate(sampling)}
        scheduler.update_plan(plan, sampled)
        for rid, token in sampled.items():
            outputs[rid].append(token)
            if len(outputs[rid]) == n:
                scheduler.finish(rid)
        step += 1
        for rid, prompt in list(late.items()):
            if step == 3:
                scheduler.add(Sequence(rid, prompt, cache_salt="tenant-a"))
                del late[rid]
        assert step < 10_000, "no progress"
    return outputs, preemptions, blocks


def test_paged_batch_equals_full_recompute_with_chunks_and_prefix_hits(model: MuseForCausalLM):
    rng = random.Random(1)
    prompts = {f"r{i}": random_prompt(rng, n) for i, n in enumerate([3, 17, 40, 9, 64])}
    late = {"shares-prefix": prompts["r2"][:33] + [11, 12, 13]}  # 8 full blocks of r2 are cached by then
    expected = {rid: greedy_reference(model, p, 10) for rid, p in {**prompts, **late}.items()}
    outputs, preemptions, blocks = run_core(model, prompts, 10, num_blocks=256, late=dict(late))
    assert outputs == expected
    assert preemptions == 0
    assert blocks.prefix_hits >= 32
    assert blocks.num_free_blocks == blocks.num_blocks


def test_paged_batch_equals_full_recompute_across_preemption(model: MuseForCausalLM):
    rng = random.Random(2)
    prompts = {f"r{i}": random_prompt(rng, n) for i, n in enumerate([30, 30, 30, 30])}
    expected = {rid: greedy_reference(model, p, 12) for rid, p in prompts.items()}
    # 40 blocks of 4 tokens cannot hold four sequences of 42 tokens at once.
    outputs, preemptions, blocks = run_core(model, prompts, 12, num_blocks=40, late={})
    assert preemptions > 0
    assert outputs == expected
    assert blocks.num_free_blocks == blocks.num_blocks


def prepared(request_id: str, prompt: list[int], **overrides) -> PreparedRequest:
    return prepared_request(request_id, prompt, **overrides)


def reference_text(model: MuseForCausalLM, tokenizer: MuseTokenizer, request: PreparedRequest) -> str:
    state = RequestState(request, tokenizer, MuseFormat(tokenizer).markers)
    for token in greedy_reference(model, list(request.prompt_token_ids), request.max_output_tokens):
        state.append(token)
        if state.finish is not None:
            break
    return state.take_chunk().text


async def collect(engine: MuseEngine, request: PreparedRequest) -> tuple[str, object]:
    text, usage = [], None
    async for chunk in engine.generate(request):
        text.append(chunk.text)
        usage = chunk.usage or usage
    return "".join(text), usage


async def test_engine_streams_equal_the_reference_for_concurrent_requests(model, tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    rng = random.Random(3)
    requests = [prepared(f"c{i}", random_prompt(rng, n)) for i, n in enumerate([5, 31, 60, 12, 47, 8])]
    try:
        results = await asyncio.gather(*(collect(engine, r) for r in requests))
    finally:
        engine.shutdown()
    for request, (text, usage) in zip(requests, results, strict=True):
        assert text == reference_text(model, tokenizer, request)
        assert usage.prompt_tokens == request.num_prompt_tokens
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks


async def test_same_seed_same_text_alone_and_in_a_busy_batch(tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    rng = random.Random(4)
    prompt = random_prompt(rng, 20)
    seeded = dict(temperature=1.0, top_p=0.9, seed=1234, max_output_tokens=24)
    try:
        alone, _ = await collect(engine, prepared("alone", prompt, **seeded))
        noise = [prepared(f"noise{i}", random_prompt(rng, 10 + i), temperature=1.0) for i in range(6)]
        busy = await asyncio.gather(
            collect(engine, prepared("busy", prompt, **seeded)), *(collect(engine, r) for r in noise)
        )
    finally:
        engine.shutdown()
    assert busy[0][0] == alone


async def test_second_turn_reuses_the_prefix_and_reports_cached_tokens(tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    prompt = random_prompt(random.Random(5), 40)
    try:
        _, first = await collect(engine, prepared("turn1", prompt))
        _, second = await collect(engine, prepared("turn2", prompt + [100, 101, 102]))
        _, other_tenant = await collect(engine, prepared("tenant-b", prompt, tenant="tenant-b"))
    finally:
        engine.shutdown()
    assert first.cached_tokens == 0
    assert second.cached_tokens == 40  # ten full blocks of 4
    assert other_tenant.cached_tokens == 0  # the cache is salted per tenant


async def test_a_16k_token_prompt_runs_through_chunked_prefill(tokenizer):
    pool = pool_config(block_size=16, kv_cache_bytes=16 << 20, max_batched_tokens=2048, max_prefill_chunk=2048)
    engine = build_engine(pool, MuseFormat(tokenizer))
    prompt = random_prompt(random.Random(6), 16_384)
    try:
        text, usage = await collect(engine, prepared("long", prompt, max_output_tokens=4))
    finally:
        engine.shutdown()
    assert usage.prompt_tokens == 16_384
    assert 1 <= usage.output_tokens <= 4


async def test_abort_and_deadline_free_blocks_at_once(tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    prompt = random_prompt(random.Random(7), 30)
    try:
        stream = engine.generate(prepared("aborted", prompt, max_output_tokens=200))
        await stream.__anext__()
        await stream.aclose()  # the client went away
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
        late = dataclasses.replace(prepared("late", prompt), deadline_unix_s=time.time() - 1)
        with pytest.raises(DeadlineExceeded):
            await collect(engine, late)
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    finally:
        engine.shutdown()
    assert engine.stats.recent["aborted"].phase.value == "cancelled"
    assert engine.stats.recent["late"].phase.value == "cancelled"


class RecordingMetrics(InMemoryMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []
        self.generated = 0

    def scheduled_first(self, queue_s: float, prompt_tokens: int, cached_tokens: int) -> None:
        self.calls.append(("scheduled", prompt_tokens, cached_tokens))

    def token(self, since_last_s: float, first: bool) -> None:
        assert since_last_s >= 0
        self.calls.append(("ttft" if first else "itl",))

    def ended(self, e2e_s: float, reason: str) -> None:
        self.calls.append(("ended", reason))

    def step(self, running: int, waiting: int, kv_usage: float, generated_tokens: int) -> None:
        assert 0.0 <= kv_usage <= 1.0
        self.generated += generated_tokens
        self.calls.append(("step",))


async def test_metrics_see_queue_ttft_every_token_and_the_end(tokenizer):
    metrics = RecordingMetrics()
    engine = build_engine(pool_config(), MuseFormat(tokenizer), metrics=metrics)
    prompt = random_prompt(random.Random(8), 12)
    try:
        _, usage = await collect(engine, prepared("measured", prompt, max_output_tokens=6))
    finally:
        engine.shutdown()
    kinds = [c[0] for c in metrics.calls if c[0] != "step"]
    generated = usage.output_tokens
    assert kinds == ["scheduled", "ttft", *["itl"] * (generated - 1), "ended"]
    assert ("scheduled", 12, 0) in metrics.calls
    ended = [c for c in metrics.calls if c[0] == "ended"]
    assert ended == [("ended", "length" if generated == 6 else "stop")]
    assert metrics.calls[-1] == ("step",)  # a step's state is reported after its tokens went out
    assert metrics.generated == generated


async def test_a_higher_priority_tier_is_scheduled_first(tokenizer):
    engine = build_engine(pool_config(max_running_requests=1), MuseFormat(tokenizer))
    rng = random.Random(9)
    order: list[str] = []

    async def run(request: PreparedRequest) -> None:
        async for _ in engine.generate(request):
            if request.request_id not in order:
                order.append(request.request_id)

    try:
        first = asyncio.create_task(run(prepared("running", random_prompt(rng, 8), max_output_tokens=4)))
        await asyncio.sleep(0)  # "running" takes the one batch slot
        low = asyncio.create_task(run(prepared("low", random_prompt(rng, 8), max_output_tokens=2, priority=5)))
        high = asyncio.create_task(run(prepared("high", random_prompt(rng, 8), max_output_tokens=2, priority=1)))
        await asyncio.gather(first, low, high)
    finally:
        engine.shutdown()
    assert order.index("high") < order.index("low")


async def test_logprobs_are_the_models_own_and_cover_every_answer_token(model, tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    prompt = random_prompt(random.Random(10), 15)
    request = prepared("with-logprobs", prompt, max_output_tokens=6, logprobs=True, top_logprobs=3)
    positions = []
    try:
        async for chunk in engine.generate(request):
            positions.extend(chunk.logprobs)
    finally:
        engine.shutdown()
    tokens = greedy_reference(model, prompt, 6)
    assert [p.chosen.token_id for p in positions] == tokens[: len(positions)]
    with torch.inference_mode():
        for index, position in enumerate(positions):
            context = torch.tensor(prompt + tokens[:index])
            logits = reference_logits(
                model, context, torch.arange(len(context)), SequenceKVCache.for_model(model.config)
            )
            expected = logits[-1].log_softmax(dim=-1)
            assert position.chosen.logprob == pytest.approx(float(expected[position.chosen.token_id]), abs=1e-4)
            assert len(position.top) == 3
            assert position.top[0].token_id == position.chosen.token_id  # greedy picks the most likely
            assert [t.logprob for t in position.top] == sorted((t.logprob for t in position.top), reverse=True)


async def test_no_logprobs_unless_asked(tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    try:
        chunks = [c async for c in engine.generate(prepared("plain", random_prompt(random.Random(11), 9)))]
    finally:
        engine.shutdown()
    assert all(c.logprobs == () for c in chunks)


async def test_the_model_is_built_and_every_step_runs_on_one_thread_off_the_event_loop(tokenizer, monkeypatch):
    """On a CPU a second thread entering torch's OpenMP pool slows every step down: the engine's
    torch work (building the model, the forward pass, sampling) stays on its device thread."""
    import threading

    import museserve.replica as loading_module
    import museserve.runner.device as device_module

    threads: dict[str, set[int]] = {"build": set(), "execute": set(), "sample": set()}
    build = loading_module.pool_executor

    def recorded_build(*args, **kwargs):
        threads["build"].add(threading.get_ident())
        return build(*args, **kwargs)

    monkeypatch.setattr(loading_module, "pool_executor", recorded_build)
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    execute, sample = engine.runner.executor.execute, device_module.sample_and_verify

    def recorded_execute(plan):
        threads["execute"].add(threading.get_ident())
        return execute(plan)

    def recorded_sample(plan, rows, logits, proposals):
        threads["sample"].add(threading.get_ident())
        return sample(plan, rows, logits, proposals)

    engine.runner.executor.execute = recorded_execute
    monkeypatch.setattr(device_module, "sample_and_verify", recorded_sample)
    request = prepared("one-thread", random_prompt(random.Random(12), 20), max_output_tokens=5, frequency_penalty=0.5)
    try:
        await asyncio.gather(collect(engine, request), collect(engine, prepared("other", [5, 6, 7])))
    finally:
        engine.shutdown()
    used = threads["build"] | threads["execute"] | threads["sample"]
    assert len(used) == 1 and all(threads.values())
    assert threading.get_ident() not in used
