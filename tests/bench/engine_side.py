"""Our engine's side of `bench_engine`: requests through `MuseEngine.generate` as a server runs
them, timed from the call to each chunk; the executor wrapped to time every step."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass

import torch

from museserve.config import PoolConfig
from museserve.domain import Mode, SamplingParams
from museserve.engine.engine import MuseEngine
from museserve.messages import PreparedRequest
from museserve.model.cpu_linear import PackedLinear
from tests.bench.hf_baseline import Job, synchronize

PREFIX_TOKENS = 2048
PREFIX_SUFFIX_TOKENS = 64
PREFIX_REPEATS = 3
TENANT = "bench"


@dataclass
class Outcome:
    ttft_s: float
    latency_s: float
    output_tokens: int
    finish: str
    text: str
    cached_tokens: int


class _TimedExecutor:
    """Passes steps through to the engine's executor and records how long each took."""

    def __init__(self, inner, device: torch.device):
        self.inner = inner
        self.device = device
        self.num_blocks = inner.num_blocks
        self.steps: list[tuple[float, int, int]] = []  # (seconds, sequences, tokens)

    def execute(self, plan):
        start = time.perf_counter()
        logits = self.inner.execute(plan)
        synchronize(self.device)  # the runner already waits; this keeps the timing honest if it stops
        self.steps.append((time.perf_counter() - start, len(plan.sequences), plan.num_batched_tokens))
        return logits


def prepared(pool: PoolConfig, prompt: list[int], max_output_tokens: int, tenant: str = TENANT) -> PreparedRequest:
    """Greedy, and past the model's end tokens: every request generates exactly its budget."""
    return PreparedRequest(
        request_id=uuid.uuid4().hex,
        tenant=tenant,
        pool=pool.name,
        prompt_token_ids=tuple(prompt),
        mode=Mode.INSTANT,
        thinking_budget=0,
        sampling=SamplingParams(
            temperature=0.0,
            top_p=1.0,
            top_k=0,
            seed=0,
            max_output_tokens=max_output_tokens,
            repetition_penalty=1.0,
            ignore_eos=True,
        ),
        deadline_unix_s=time.time() + 3600,
    )


async def run_one(engine: MuseEngine, request: PreparedRequest) -> Outcome:
    start = time.perf_counter()
    first = None
    text: list[str] = []
    async for chunk in engine.generate(request):
        if first is None and (chunk.text or chunk.num_new_tokens):
            first = time.perf_counter()
        text.append(chunk.text)
        if chunk.finish is not None:
            end = time.perf_counter()
            return Outcome(
                ttft_s=(first if first is not None else end) - start,
                latency_s=end - start,
                output_tokens=chunk.usage.output_tokens,
                finish=str(chunk.finish),
                text="".join(text),
                cached_tokens=chunk.usage.cached_tokens,
            )
    raise RuntimeError("the stream ended without a final chunk")


async def run_ours(
    engine: MuseEngine, pool: PoolConfig, jobs: list[Job], concurrency: int, device: torch.device
) -> tuple[list, float]:
    gate = asyncio.Semaphore(concurrency)

    async def gated(job: Job) -> Outcome:
        async with gate:
            return await run_one(engine, prepared(pool, job.prompt, job.max_output_tokens))

    synchronize(device)
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(gated(job) for job in jobs))
    synchronize(device)
    return outcomes, time.perf_counter() - start


async def prefix_ttfts(engine: MuseEngine, pool: PoolConfig, seed: int, ids: tuple[int, int]) -> dict:
    """`ids`: randrange bounds of ordinary token ids."""
    rng = random.Random(seed + 1)
    second, cold, cached = [], [], []
    for _ in range(PREFIX_REPEATS):
        prefix = [rng.randrange(*ids) for _ in range(PREFIX_TOKENS)]
        suffix = [rng.randrange(*ids) for _ in range(PREFIX_SUFFIX_TOKENS)]
        await run_one(engine, prepared(pool, prefix, 16))  # first turn, finished before the second starts
        warm = await run_one(engine, prepared(pool, prefix + suffix, 1))
        fresh = [rng.randrange(*ids) for _ in range(PREFIX_TOKENS + PREFIX_SUFFIX_TOKENS)]
        cold_outcome = await run_one(engine, prepared(pool, fresh, 1))
        second.append(warm.ttft_s)
        cold.append(cold_outcome.ttft_s)
        cached.append(warm.cached_tokens)
    return {
        "prefix_ttft_ratio": statistics.median(second) / statistics.median(cold),
        "second_turn_ttft_s": second,
        "cold_turn_ttft_s": cold,
        "second_turn_cached_tokens": cached,
        "prompt_tokens": PREFIX_TOKENS + PREFIX_SUFFIX_TOKENS,
        "shared_prefix_tokens": PREFIX_TOKENS,
        "repeats": PREFIX_REPEATS,
        "note": "ratio of medians; engine idle; second turn = first turn's prompt + 64 new tokens",
    }


async def bench_ours(
    engine: MuseEngine,
    pool: PoolConfig,
    jobs: list[Job],
    warmup: list[Job],
    concurrency: int,
    prefix_ids: tuple[int, int] | None,
    seed: int,
) -> tuple:
    """(outcomes, wall seconds, timed steps, prefix-cache TTFTs or None when `prefix_ids` is None)."""
    device = next(engine.runner.executor.model.parameters()).device
    await asyncio.gather(
        *(run_one(engine, prepared(pool, j.prompt, j.max_output_tokens, tenant="warmup")) for j in warmup)
    )
    timed = _TimedExecutor(engine.runner.executor, device)
    engine.runner.executor = timed
    outcomes, wall = await run_ours(engine, pool, jobs, concurrency, device)
    engine.runner.executor = timed.inner
    prefix = None if prefix_ids is None else await prefix_ttfts(engine, pool, seed, prefix_ids)
    return outcomes, wall, timed.steps, prefix


def cuda_graphs_used(engine: MuseEngine) -> dict | None:
    """Decode graphs the runner captured over the whole run; their capture time is in our wall time."""
    graphs = getattr(engine.runner.executor, "graphs", None)
    if graphs is None:
        return None
    return {"captured": len(graphs.graphs), "capture_s": graphs.capture_s, "buckets": sorted(graphs.graphs)}


def linear_layers(model: torch.nn.Module) -> str:
    """What a model's linear layers run on."""
    packed = any(isinstance(m, PackedLinear) for m in model.modules())
    return "oneDNN, weights packed at load" if packed else "torch matmul (nn.Linear)"
