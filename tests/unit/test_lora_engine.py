"""Adapters in the engine (a dummy model, PEFT-format adapters): every request gets its own
adapter's answer while more adapters than slots churn; an adapter's prefix-cache blocks serve
only that adapter; unknown, malformed, disabled and crowded-out adapters are refused with the
adapter named, and the replica goes on serving."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from museserve.config import PoolConfig
from museserve.errors import FailedPrecondition, NotFound, Unavailable
from museserve.messages import GenerationChunk
from museserve.model.config import MuseConfig
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.lora_support import write_adapter
from tests.support import prepared_request

NAMES = ("a0", "a1", "a2", "a3", "a4")
PROMPT = tuple(range(50, 90))  # 10 full blocks of 4


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer) -> Path:
    """A directory of adapters named a0..a4, and `broken` (a B of the wrong shape)."""
    root = tmp_path_factory.mktemp("store")
    base = MuseConfig.named("tiny", vocab_size=tokenizer.vocab_size)
    for seed, name in enumerate(NAMES):
        write_adapter(root / name, base, rank=4 + 2 * seed, seed=seed, targets=("q_proj", "o_proj", "up_proj"))
    write_adapter(root / "broken", base, rank=4, seed=9, targets=("v_proj",))
    from safetensors.torch import load_file, save_file

    path = root / "broken" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"] = tensors[
        "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"][:3]  # fmt: skip
    save_file(tensors, str(path))
    return root


def pool_config(store: Path | None, max_loaded: int = 8, timeout_s: float = 30.0) -> PoolConfig:
    engine = {
        "context_length": 1024,
        "max_output_tokens": 256,
        "default_max_output_tokens": 16,
        "max_running_requests": 16,
        "block_size": 4,
        "kv_cache_bytes": 1 << 20,
        "min_context_per_request": 64,
        "stream_interval_ms": 0,
    }
    lora = {"directory": str(store), "max_loaded_adapters": max_loaded, "load_timeout_s": timeout_s} if store else {}
    return PoolConfig(name="muse-test", model={"device": "cpu"}, engine=engine, lora=lora)


async def answer(engine, rid: str, adapter: str = "", prompt=PROMPT, **sampling) -> list[GenerationChunk]:
    request = prepared_request(rid, prompt, adapter=adapter, **sampling)
    return [chunk async for chunk in engine.generate(request)]


def text(chunks: list[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_every_request_gets_its_own_adapters_answer_while_adapters_churn(store, tokenizer) -> None:
    roomy = build_engine(pool_config(store), MuseFormat(tokenizer))
    try:
        alone = {name: text(await answer(roomy, f"alone-{name}", name)) for name in ("", *NAMES)}
    finally:
        roomy.shutdown(wait=True)
    assert len(set(alone.values())) == len(alone)  # each adapter answers its own way
    engine = build_engine(pool_config(store, max_loaded=2), MuseFormat(tokenizer))
    try:
        names = [name for _ in range(3) for name in ("", *NAMES)]
        answers = await asyncio.gather(*(answer(engine, f"r{i}", name) for i, name in enumerate(names)))
        assert [text(chunks) for chunks in answers] == [alone[name] for name in names]
        metrics = engine.adapters.metrics
        assert sum(metrics.evictions.values()) >= 3 and sum(metrics.loads.values()) >= 5
        assert all(users == 0 for _, _, users in engine.adapters.slots.resident())
        assert len(engine.adapters.resident()) == 2
    finally:
        engine.shutdown(wait=True)


async def test_an_adapters_prefix_blocks_serve_only_that_adapter(store, tokenizer) -> None:
    engine = build_engine(pool_config(store), MuseFormat(tokenizer))

    async def cached(rid: str, adapter: str) -> int:
        chunks = await answer(engine, rid, adapter, max_output_tokens=2)
        return chunks[-1].usage.cached_tokens

    try:
        assert await cached("first", "a0") == 0
        assert await cached("again", "a0") >= 36
        assert await cached("other", "a1") == 0
        assert await cached("base", "") == 0
        assert await cached("base-again", "") >= 36
    finally:
        engine.shutdown(wait=True)


async def test_unknown_and_malformed_adapters_are_refused_and_the_replica_serves_on(store, tokenizer) -> None:
    engine = build_engine(pool_config(store), MuseFormat(tokenizer))
    try:
        with pytest.raises(NotFound, match="model muse-test has no adapter 'nope'") as unknown:
            await answer(engine, "unknown", "nope")
        assert unknown.value.field == "adapter"
        with pytest.raises(FailedPrecondition, match=r"adapter broken: layers\.1\.v_proj\.lora_B\.weight is \[3, "):
            await answer(engine, "broken", "broken")
        assert engine.adapters.metrics.load_failures["broken"] == 1
        assert engine.adapters.slots.resident() == []
        assert text(await answer(engine, "good", "a0")) and text(await answer(engine, "plain"))
        assert engine.requests == {} and engine.blocks.usage == 0.0
    finally:
        engine.shutdown(wait=True)
    plain = build_engine(pool_config(None), MuseFormat(tokenizer))
    try:
        with pytest.raises(NotFound, match="model muse-test has no adapter 'a0'"):
            await answer(plain, "no-lora", "a0")
    finally:
        plain.shutdown(wait=True)


async def test_with_every_slot_in_use_a_new_adapter_waits_then_is_refused(store, tokenizer) -> None:
    engine = build_engine(pool_config(store, max_loaded=1, timeout_s=0.2), MuseFormat(tokenizer))
    try:
        long = asyncio.create_task(answer(engine, "long", "a0", max_output_tokens=200, ignore_eos=True))
        while not engine.adapters.resident():
            await asyncio.sleep(0.01)
        with pytest.raises(Unavailable, match=r"adapter 'a1' .*every one of its lora\.max_loaded_adapters=1 slots"):
            await answer(engine, "crowded", "a1")
        await long
        assert text(await answer(engine, "later", "a1"))  # the slot is free again: a0 is evicted for it
        assert engine.adapters.metrics.evictions["a0"] == 1
    finally:
        engine.shutdown(wait=True)


async def test_operators_keep_and_disable_adapters(store, tokenizer) -> None:
    engine = build_engine(pool_config(store, max_loaded=2), MuseFormat(tokenizer))
    try:
        await engine.adapters.configure(keep=["a0"], disabled=["a4"])
        assert engine.adapters.resident() == ["a0"]
        for name in ("a1", "a2", "a3"):
            await answer(engine, name, name)
        assert "a0" in engine.adapters.resident()  # kept through the churn
        with pytest.raises(NotFound, match="adapter 'a4' of model muse-test is disabled"):
            await answer(engine, "off", "a4")
        await engine.adapters.configure(keep=[], disabled=[])
        await answer(engine, "a4", "a4")
        await answer(engine, "a1-again", "a1")
        assert "a0" not in engine.adapters.resident()
    finally:
        engine.shutdown(wait=True)
