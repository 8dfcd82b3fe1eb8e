"""Where the engine runs: the model config's device, resolved once, and the engine on a GPU
streaming what the same engine streams on the CPU (the GPU tests skip where PyTorch sees none)."""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from museserve.config import PoolConfig
from museserve.engine.engine import MuseEngine
from museserve.metrics import InMemoryMetrics
from museserve.model.loader import resolve_device
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.support import prepared_request

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no GPU")


def test_auto_is_cuda_only_where_a_gpu_is_seen(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cuda"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_an_engine_on_the_cpu_holds_its_weights_and_kv_there(tokenizer):
    engine = build_engine(pool_config("cpu"), MuseFormat(tokenizer))
    assert next(engine.runner.executor.model.parameters()).device.type == "cpu"
    assert engine.runner.executor.pool.keys[0].device.type == "cpu"


def test_in_memory_metrics_count_into_prometheus_buckets():
    metrics = InMemoryMetrics()
    metrics.token(0.003, first=True)
    metrics.token(0.5, first=True)
    metrics.token(1e6, first=True)
    assert metrics.ttft.count == 3 and metrics.ttft.sum == pytest.approx(1e6 + 0.503)
    assert metrics.ttft.counts[1] == 1  # 0.003 <= 0.005, the second bound
    assert metrics.ttft.counts[metrics.ttft.bounds.index(0.5)] == 1  # a bound is inclusive (le)
    assert metrics.ttft.counts[-1] == 1  # +Inf
    metrics.ended(1.0, "stop")
    metrics.ended(2.0, "stop")
    assert metrics.finished == {"stop": 2}


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def pool_config(device: str) -> PoolConfig:
    engine = {
        "context_length": 4096,
        "max_output_tokens": 256,
        "default_max_output_tokens": 16,
        "max_running_requests": 8,
        "max_waiting_requests": 16,
        "max_batched_tokens": 64,
        "max_prefill_chunk": 24,
        "block_size": 4,
        "kv_cache_bytes": 1 << 20,
        "min_context_per_request": 1024,
        "stream_interval_ms": 0,
    }
    return PoolConfig(name="muse-test", model={"device": device}, engine=engine)


async def run_all(engine: MuseEngine, requests) -> list[tuple[str, list]]:
    async def one(request) -> tuple[str, list]:
        text, logprobs = [], []
        async for chunk in engine.generate(request):
            text.append(chunk.text)
            logprobs.extend(chunk.logprobs)
        return "".join(text), logprobs

    try:
        return await asyncio.gather(*(one(r) for r in requests))
    finally:
        engine.shutdown()


def requests(rng: random.Random) -> list:
    prompts = [[rng.randrange(32, 8000) for _ in range(n)] for n in (5, 31, 60, 12, 47, 8)]
    out = [prepared_request(f"g{i}", p, max_output_tokens=10) for i, p in enumerate(prompts)]
    out.append(prepared_request("penalised", prompts[0], repetition_penalty=1.3, frequency_penalty=0.5))
    out.append(prepared_request("logprobs", prompts[1], logprobs=True, top_logprobs=2))
    return out


@needs_cuda
async def test_the_engine_on_cuda_streams_what_it_streams_on_the_cpu(tokenizer):
    batch = requests(random.Random(3))
    on_cpu = await run_all(build_engine(pool_config("cpu"), MuseFormat(tokenizer)), batch)
    engine = build_engine(pool_config("cuda"), MuseFormat(tokenizer))
    assert next(engine.runner.executor.model.parameters()).is_cuda and engine.runner.executor.pool.keys[0].is_cuda
    on_cuda = await run_all(engine, batch)
    assert [text for text, _ in on_cuda] == [text for text, _ in on_cpu]
    cpu_logprobs, cuda_logprobs = on_cpu[-1][1], on_cuda[-1][1]
    assert [p.chosen.token_id for p in cuda_logprobs] == [p.chosen.token_id for p in cpu_logprobs]
    for ours, theirs in zip(cuda_logprobs, cpu_logprobs, strict=True):
        assert ours.chosen.logprob == pytest.approx(theirs.chosen.logprob, abs=1e-4)


@needs_cuda
async def test_a_seed_gives_the_same_tokens_on_cuda_alone_and_in_a_busy_batch(tokenizer):
    rng = random.Random(4)
    prompt = [rng.randrange(32, 8000) for _ in range(20)]
    seeded = dict(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_output_tokens=24)
    ((alone, _),) = await run_all(
        build_engine(pool_config("cuda"), MuseFormat(tokenizer)), [prepared_request("a", prompt, **seeded)]
    )
    noise = [
        prepared_request(f"n{i}", [rng.randrange(32, 8000) for _ in range(10 + i)], temperature=1.0) for i in range(6)
    ]
    busy = await run_all(
        build_engine(pool_config("cuda"), MuseFormat(tokenizer)), [prepared_request("b", prompt, **seeded), *noise]
    )
    assert busy[0][0] == alone
