"""Overlap scheduling changes when work happens, never what comes out: the same requests give
the same tokens, texts, finishes and usage with it on and off, through seeded sampling,
penalties, the forced end of reasoning, stop tokens, log probabilities, grammar constraints,
preemption and cancellation."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from museserve.config import PoolConfig
from museserve.domain import Mode, ResponseFormat, ResponseFormatKind
from museserve.engine.engine import MuseEngine
from museserve.errors import Cancelled, InvalidArgument
from museserve.messages import PreparedRequest
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.support import prepared_request

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}, "required": ["n"]}


def pool_config(overlap: bool | str, kv_cache_bytes: int) -> PoolConfig:
    engine = {
        "context_length": 4096,
        "max_output_tokens": 256,
        "default_max_output_tokens": 16,
        "max_running_requests": 8,
        "max_batched_tokens": 48,
        "max_prefill_chunk": 16,
        "block_size": 4,
        "kv_cache_bytes": kv_cache_bytes,
        "min_context_per_request": 64,  # the preempting cache holds 80 tokens
        "stream_interval_ms": 0,
        "overlap_scheduling": overlap if isinstance(overlap, str) else ("on" if overlap else "off"),
    }
    return PoolConfig(name="muse-test", model={"device": "cpu"}, engine=engine)


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def workload(vocab_size: int) -> list[PreparedRequest]:
    rng = random.Random(11)
    requests = []
    for i in range(12):
        kind = i % 6
        fields: dict = {"max_output_tokens": rng.randrange(6, 28)}
        if kind == 1:
            fields.update(temperature=1.0, top_p=0.9, top_k=40, seed=100 + i)
        elif kind == 2:
            fields.update(temperature=0.8, seed=i, frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.2)
        elif kind == 3:
            fields.update(mode=Mode.THINKING, thinking_budget=rng.randrange(1, 6))  # the close marker is forced
        elif kind == 4:
            fields.update(logprobs=True, top_logprobs=3, stop_token_ids=tuple(range(40, vocab_size, 11)))
        elif kind == 5:
            fields.update(response_format=ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(SCHEMA)))
        prompt = [rng.randrange(32, 8000) for _ in range(rng.randrange(3, 40))]
        requests.append(prepared_request(f"r{i}", prompt, **fields))
    return requests


async def outcome(engine: MuseEngine, request: PreparedRequest) -> tuple:
    text, reasoning, logprobs, finish, usage = [], [], [], None, None
    async for chunk in engine.generate(request):
        text.append(chunk.text)
        reasoning.append(chunk.reasoning)
        logprobs.extend((p.chosen.token_id, round(p.chosen.logprob, 4)) for p in chunk.logprobs)
        finish, usage = chunk.finish or finish, chunk.usage or usage
    return "".join(text), "".join(reasoning), tuple(logprobs), finish, usage


async def run(tokenizer: MuseTokenizer, overlap: bool, kv_cache_bytes: int) -> tuple[list, int]:
    engine = build_engine(pool_config(overlap, kv_cache_bytes), MuseFormat(tokenizer))
    preempted = []
    schedule = engine.scheduler.schedule

    def counting_schedule():
        plan = schedule()
        preempted.extend(plan.preempted)
        return plan

    engine.scheduler.schedule = counting_schedule
    try:
        results = await asyncio.gather(*(outcome(engine, r) for r in workload(tokenizer.vocab_size)))
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
        assert not engine.requests
    finally:
        engine.shutdown()
    return results, len(preempted)


@pytest.mark.parametrize("kv_cache_bytes", [1 << 20, 40 << 10], ids=["roomy", "preempting"])
async def test_overlap_gives_the_same_outputs_as_one_step_at_a_time(tokenizer, kv_cache_bytes: int) -> None:
    sequential, _ = await run(tokenizer, False, kv_cache_bytes)
    overlapped, preemptions = await run(tokenizer, True, kv_cache_bytes)
    assert overlapped == sequential
    finishes = {str(result[3]) for result in sequential}
    assert {"stop", "length"} <= finishes
    assert any(result[1] for result in sequential)  # some reasoning, closed by the forced marker
    if kv_cache_bytes < 1 << 20:
        assert preemptions > 0


async def test_a_request_cancelled_mid_stream_frees_its_blocks_while_others_go_on(tokenizer) -> None:
    engine = build_engine(pool_config(True, 1 << 20), MuseFormat(tokenizer))
    try:
        long = prepared_request("long", list(range(40, 60)), max_output_tokens=200)
        other = prepared_request("other", list(range(70, 90)), max_output_tokens=30)
        stream = engine.generate(long)
        await anext(stream)
        finishing = asyncio.create_task(outcome(engine, other))
        await asyncio.sleep(0.05)
        engine.abort("long")
        with pytest.raises(Cancelled):
            async for _ in stream:
                pass
        assert (await finishing)[3] is not None
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
        assert engine.stats.recent["long"].phase.value == "cancelled"
    finally:
        engine.shutdown()


async def test_a_request_id_in_use_is_refused_until_its_request_ends(tokenizer) -> None:
    engine = build_engine(pool_config(True, 1 << 20), MuseFormat(tokenizer))
    try:
        first = engine.generate(prepared_request("same", [40, 41], max_output_tokens=50))
        await anext(first)
        with pytest.raises(InvalidArgument) as refused:
            await anext(engine.generate(prepared_request("same", [50, 51])))
        assert refused.value.field == "request_id"
        await first.aclose()
        _, _, _, finish, _ = await outcome(engine, prepared_request("same", [50, 51], max_output_tokens=3))
        assert finish is not None
    finally:
        engine.shutdown()


def test_auto_overlaps_only_where_the_model_runs_on_a_gpu(tokenizer) -> None:
    pool = pool_config("auto", 1 << 20)
    on_cpu = build_engine(pool, MuseFormat(tokenizer))
    try:
        assert not on_cpu.runner.on_accelerator and not on_cpu.overlap
        on_cpu.runner.on_accelerator = True  # as a runner whose executor computes on a GPU reports
        window = on_cpu.context_window
        assert MuseEngine(pool, MuseFormat(tokenizer), on_cpu.runner, context_window=window).overlap
        off = pool_config("off", 1 << 20)
        assert not MuseEngine(off, MuseFormat(tokenizer), on_cpu.runner, context_window=window).overlap
    finally:
        on_cpu.shutdown()
