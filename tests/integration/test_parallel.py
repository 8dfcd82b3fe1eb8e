"""Parallel replicas on real Ray actors: TP=2 (DeepSpeed AutoTP over gloo), PP=2 and
TP=2 x PP=2 give the same greedy text as one worker, through the engine, with chunked
prefill, batched decode and prefix hits; a killed worker fails its requests with
UNAVAILABLE and the replica rebuilds.

Reuses the session's Ray cluster when one is up; otherwise starts (and stops) its own.
Workers reserve 0.01 CPU each, so four fit beside the session app on two cores.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator

import pytest
import ray

from museserve.config import PoolConfig
from museserve.engine.engine import MuseEngine
from museserve.errors import Unavailable
from museserve.messages import PreparedRequest
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.support import prepared_request

pytestmark = pytest.mark.integration

LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2), "tp2xpp2": (2, 2)}
ENGINE = {
    "context_length": 2048,
    "max_output_tokens": 256,
    "default_max_output_tokens": 16,
    "max_batched_tokens": 24,
    "max_prefill_chunk": 8,  # prompts of 23-37 tokens take 3-5 chunks
    "block_size": 4,
    "kv_cache_bytes": 1 << 20,
    "stream_interval_ms": 0,
}


def pool(tensor: int = 1, pipeline: int = 1) -> PoolConfig:
    parallel = {"tensor": tensor, "pipeline": pipeline, "step_timeout_s": 60, "start_timeout_s": 120}
    return PoolConfig(name="muse-par", model={"device": "cpu"}, engine=ENGINE, parallel=parallel)


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32, 8000) for _ in range(n)]


RNG = random.Random(11)
PROMPTS = {"a": _prompt(RNG, 5), "b": _prompt(RNG, 23), "c": _prompt(RNG, 37)}
# The second wave extends the first wave's prompts: their full blocks are prefix hits.
FOLLOW_UPS = {"b2": PROMPTS["b"] + _prompt(RNG, 6), "c2": PROMPTS["c"] + _prompt(RNG, 9)}
LONG = _prompt(RNG, 12)  # the request a worker dies under


def request(request_id: str, prompt: list[int], max_output_tokens: int = 10) -> PreparedRequest:
    return prepared_request(request_id, prompt, max_output_tokens=max_output_tokens)


async def collect(engine: MuseEngine, req: PreparedRequest) -> tuple[str, int]:
    text, tokens = [], 0
    async for chunk in engine.generate(req):
        text.append(chunk.text)
        tokens += chunk.num_new_tokens
    return "".join(text), tokens


async def two_waves(engine: MuseEngine) -> dict[str, tuple[str, int]]:
    first = await asyncio.gather(*(collect(engine, request(k, p)) for k, p in PROMPTS.items()))
    second = await asyncio.gather(*(collect(engine, request(k, p)) for k, p in FOLLOW_UPS.items()))
    return dict(zip([*PROMPTS, *FOLLOW_UPS], [*first, *second], strict=True))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
async def expected(tokenizer: MuseTokenizer) -> dict[str, tuple[str, int]]:
    """One worker, in this process: the texts every layout must reproduce."""
    engine = build_engine(pool(), MuseFormat(tokenizer))
    try:
        texts = await two_waves(engine)
        texts["long"] = await collect(engine, request("long", LONG, 200))
        texts["after"] = await collect(engine, request("after", PROMPTS["b"]))
    finally:
        engine.shutdown()
    return texts


@pytest.fixture(scope="module")
def engines(ray_cluster, tokenizer) -> Iterator[Callable[[str], MuseEngine]]:
    made: dict[str, MuseEngine] = {}

    def get(layout: str) -> MuseEngine:
        if layout not in made:
            made[layout] = build_engine(pool(*LAYOUTS[layout]), MuseFormat(tokenizer))
        return made[layout]

    yield get
    for engine in made.values():
        engine.shutdown()


@pytest.mark.parametrize("layout", list(LAYOUTS))
async def test_a_parallel_replica_gives_the_single_worker_text(layout, engines, expected) -> None:
    engine = engines(layout)
    got = await two_waves(engine)
    assert got == {k: expected[k] for k in got}
    assert engine.blocks.prefix_hits >= 4 * 8  # b2 and c2 reuse their prefixes' full blocks
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    if layout != "tp2xpp2":  # the fault test below reuses the four-worker replica
        engine.shutdown()


async def test_a_killed_worker_fails_its_request_unavailable_and_the_replica_rebuilds(engines, expected) -> None:
    assert expected["long"][1] > 100, "the long request must run long enough to be killed mid-way"
    engine = engines("tp2xpp2")
    executor = engine.runner.executor
    builds, victim = executor.builds, executor.workers()[-1]  # stage 1, TP rank 1
    stream = engine.generate(request("long", LONG, 200))
    await anext(stream)  # the request is running
    ray.kill(victim, no_restart=True)
    with pytest.raises(Unavailable):
        async with asyncio.timeout(60):
            async for _ in stream:
                pass
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    # The next request waits for the rebuilt workers, with no prefix hit on the lost cache.
    hits = engine.blocks.prefix_hits
    after = await asyncio.wait_for(collect(engine, request("after", PROMPTS["b"])), 150)
    assert after == expected["after"]
    assert engine.blocks.prefix_hits == hits
    assert executor.builds == builds + 1 and victim not in executor.workers()
