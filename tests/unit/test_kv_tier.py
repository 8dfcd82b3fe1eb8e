"""The second KV tier with tensors: copies between the paged pool and host memory or a file, and
a real engine on muse-tiny whose evicted prefix comes back from the tier with the same outputs."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import torch

from museserve.config import PoolConfig
from museserve.engine.engine import MuseEngine
from museserve.engine.sequence import Sequence
from museserve.messages import PreparedRequest
from museserve.metrics import InMemoryMetrics
from museserve.model.config import MuseConfig
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.kv_pool import PagedKVPool
from museserve.runner.kv_tier import KVTier, tier_slots
from tests.support import prepared_request

BLOCK_BYTES = 2048  # muse-tiny, float32, 4-token blocks: 2 layers x (k, v) x 2 heads x 16 x 4 bytes x 4


def pool_config(tier_bytes: int = 0, tier_path: str | None = None, overlap: str = "off") -> PoolConfig:
    engine = {
        "context_length": 4096,
        "max_output_tokens": 256,
        "default_max_output_tokens": 8,
        "max_running_requests": 4,
        "max_batched_tokens": 64,
        "max_prefill_chunk": 32,
        "block_size": 4,
        "kv_cache_bytes": 40 * BLOCK_BYTES,  # 160 tokens: each prompt below evicts the one before it
        "min_context_per_request": 64,
        "stream_interval_ms": 0,
        "overlap_scheduling": overlap,
        "kv_tier": {"bytes": tier_bytes, "path": tier_path},
    }
    return PoolConfig(name="muse-test", model={"device": "cpu"}, engine=engine)


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def random_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32, 8000) for _ in range(n)]


def filled_pool(num_blocks: int, device: str = "cpu") -> PagedKVPool:
    pool = PagedKVPool(MuseConfig.named("tiny", vocab_size=64), num_blocks, 4, dtype=torch.float32, device=device)
    for tensor in (*pool.keys, *pool.values):
        tensor.normal_()
    return pool


@pytest.mark.parametrize("on_disk", [False, True])
def test_saved_blocks_load_back_into_other_blocks(tmp_path: Path, on_disk: bool) -> None:
    pool = filled_pool(8)
    assert tier_slots(pool, 5 * BLOCK_BYTES + 1) == 5
    tier = KVTier(pool, 5, str(tmp_path) if on_disk else None)
    assert tier.num_bytes == 5 * BLOCK_BYTES
    if on_disk:
        assert list(tmp_path.iterdir()) == []  # the file is unlinked once mapped
    before = [(k.clone(), v.clone()) for k, v in zip(pool.keys, pool.values, strict=True)]
    tier.apply(saves=[(1, 4), (6, 0)], loads=[])
    for tensor in (*pool.keys, *pool.values):
        tensor[:-1].zero_()  # every block overwritten; the scratch slot kept
    tier.apply(saves=[], loads=[(4, 2), (0, 3)])
    for (k, v), (k0, v0) in zip(zip(pool.keys, pool.values, strict=True), before, strict=True):
        assert torch.equal(k[8:12], k0[4:8]) and torch.equal(v[8:12], v0[4:8])  # block 1 -> slot 4 -> block 2
        assert torch.equal(k[12:16], k0[24:28]) and torch.equal(v[12:16], v0[24:28])  # block 6 -> 0 -> 3
        assert not k[:8].any() and not k[16:-1].any()
        assert torch.equal(k[-1], k0[-1])


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no GPU")),
    ],
)
def test_saves_of_a_plan_run_before_its_loads(device: str) -> None:
    """A block saved and loaded back in one plan: the load reads the saved content (on a GPU,
    through pinned host memory)."""
    pool = filled_pool(4, device)
    tier = KVTier(pool, 2)
    assert tier.storage.is_pinned() == (device == "cuda")
    block0 = pool.values[1][0:4].clone()
    tier.apply(saves=[(0, 1)], loads=[(1, 3)])
    assert torch.equal(pool.values[1][12:16], block0)


async def generate(engine: MuseEngine, request: PreparedRequest) -> tuple[list[tuple[int, float]], int]:
    """(token, logprob) of each answer token, and the prompt tokens the cache served."""
    answer, cached = [], -1
    async for chunk in engine.generate(request):
        answer.extend((p.chosen.token_id, p.chosen.logprob) for p in chunk.logprobs)
        if chunk.usage is not None:
            cached = chunk.usage.cached_tokens
    return answer, cached


def assert_same_answer(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [lp for _, lp in got] == pytest.approx([lp for _, lp in expected], abs=1e-4)


@pytest.mark.parametrize(
    ("where", "overlap"), [("memory", "off"), ("disk", "off"), ("memory", "on")], ids=["memory", "disk", "overlap"]
)
async def test_an_evicted_prefix_comes_back_from_the_tier_with_the_same_answer(
    tokenizer: MuseTokenizer, tmp_path: Path, where: str, overlap: str
) -> None:
    metrics = InMemoryMetrics()
    pool = pool_config(64 * BLOCK_BYTES, str(tmp_path) if where == "disk" else None, overlap)
    engine = build_engine(pool, MuseFormat(tokenizer), metrics=metrics)
    assert engine.blocks.tier is not None and engine.blocks.tier.num_slots == 64
    rng = random.Random(21)
    document = random_prompt(rng, 60)  # 15 full blocks

    def ask(request_id: str, prompt: list[int]) -> PreparedRequest:
        return prepared_request(request_id, prompt, max_output_tokens=8, logprobs=True, top_logprobs=1)

    try:
        first, first_cached = await generate(engine, ask("turn1", document))
        for i in range(3):  # other traffic: 51+ blocks through a 40-block cache
            await generate(engine, ask(f"other{i}", random_prompt(rng, 60)))
        probe = Sequence("probe", document, cache_salt="tenant-a")
        assert engine.blocks.cached_prefix(probe) == []  # the document left the device
        second, second_cached = await generate(engine, ask("turn2", document))
    finally:
        engine.shutdown()
    assert first_cached == 0
    assert second_cached == 56  # every full block but the one holding the last prompt token
    assert engine.blocks.tier_hits == metrics.kv_tier_hits == 56
    assert metrics.kv_tier_loads == 14 and metrics.kv_tier_saves >= 14
    assert metrics.prefix_hits == 56
    assert_same_answer(second, first)


async def test_with_the_tier_on_and_no_hit_the_answer_is_the_same(tokenizer: MuseTokenizer) -> None:
    prompts = [random_prompt(random.Random(22 + i), 50) for i in range(4)]
    answers = {}
    for tier_bytes in (0, 64 * BLOCK_BYTES):
        engine = build_engine(pool_config(tier_bytes), MuseFormat(tokenizer))
        try:
            answers[tier_bytes] = [
                await generate(engine, prepared_request(f"p{i}", p, max_output_tokens=8, logprobs=True, top_logprobs=1))
                for i, p in enumerate(prompts)
            ]
        finally:
            engine.shutdown()
        assert engine.blocks.tier_hits == 0
    for (without, _), (with_tier, cached) in zip(answers[0], answers[64 * BLOCK_BYTES], strict=True):
        assert cached == 0
        assert_same_answer(with_tier, without)


async def test_concurrent_requests_share_the_tier_and_keep_their_answers(tokenizer: MuseTokenizer) -> None:
    """Turns of two documents interleaved with noise, several in flight at once, with overlap:
    every turn's answer equals its document's first one, wherever its prefix came from."""
    engine = build_engine(pool_config(64 * BLOCK_BYTES, overlap="on"), MuseFormat(tokenizer))
    rng = random.Random(23)
    documents = [random_prompt(rng, 44), random_prompt(rng, 36)]

    def ask(request_id: str, prompt: list[int]) -> PreparedRequest:
        return prepared_request(request_id, prompt, max_output_tokens=6, logprobs=True, top_logprobs=1)

    try:
        firsts = [await generate(engine, ask(f"d{i}", d)) for i, d in enumerate(documents)]
        turns = []
        for round_ in range(3):
            batch = [ask(f"d{i}-{round_}", d) for i, d in enumerate(documents)]
            batch += [ask(f"noise{round_}-{j}", random_prompt(rng, 40)) for j in range(2)]
            turns.append(await asyncio.gather(*(generate(engine, r) for r in batch)))
    finally:
        engine.shutdown()
    for results in turns:
        for i, (answer, _) in enumerate(results[:2]):
            assert_same_answer(answer, firsts[i][0])
    assert engine.blocks.tier_loads > 0 and engine.blocks.tier_saves > 0
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
