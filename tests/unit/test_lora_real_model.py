"""LoRA adapters on the real checkpoint (SmolLM2-135M, float32): random PEFT adapters of three
ranks and target sets, held to `peft`'s own merge (`merge_and_unload`) of each into the base.
Requests for the three adapters and for none share steps: the logits of a mixed prefill step,
and the greedy answers of a mixed batch, equal the merged models' one by one."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
import torch

from museserve.config import PoolConfig
from museserve.domain import ChatRequest, Identity, Message, Role, TextPart
from museserve.engine.plan import ScheduledSequence, SchedulerPlan
from museserve.messages import PreparedRequest
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from tests.lora_support import make_adapter, merged
from tests.real_model import SMOLLM2_GGUF, smollm2_hf_model

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = {  # name: (rank, target modules, rsLoRA)
    "health": (8, ("q_proj", "v_proj"), False),
    "shopping": (16, ALL, False),
    "glasses": (4, ("up_proj", "down_proj", "o_proj"), True),
}
TOLERANCE = 1e-4  # float32 logits, ours against the merged model's


@pytest.fixture(scope="module")
def hf():
    return smollm2_hf_model()


@pytest.fixture(scope="module")
def adapter_dirs(hf, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_adapter(hf, root / name, rank=rank, targets=targets, seed=seed, rslora=rslora)
        for seed, (name, (rank, targets, rslora)) in enumerate(ADAPTERS.items())
    }


@pytest.fixture(scope="module")
def references(hf, adapter_dirs) -> dict[str, torch.nn.Module]:
    """Each adapter merged into a copy of the base by `peft`, and the base itself under ""."""
    return {"": hf} | {name: merged(hf, directory) for name, directory in adapter_dirs.items()}


@pytest.fixture(scope="module")
def pool(adapter_dirs) -> PoolConfig:
    return PoolConfig(
        name="smollm2",
        model={"load_format": "gguf", "path": SMOLLM2_GGUF, "cpu_gemm": "onednn"},
        engine={"context_length": 2048, "max_output_tokens": 256, "default_max_output_tokens": 64,
                "kv_cache_bytes": 96 << 20, "enable_prefix_caching": False},
        lora={"adapters": [{"name": n, "path": str(p)} for n, p in adapter_dirs.items()], "max_loaded_adapters": 4},
    )  # fmt: skip


@pytest.fixture(scope="module")
def engine(pool):
    """One replica's engine on the checkpoint (loaded once for the module)."""
    from museserve.config import MuseServeConfig

    config = MuseServeConfig(pools=(pool,))
    built = build_engine(pool, pool_model(pool, config.preprocess.media, None).chat_format)
    yield built, Preprocessor.for_pools(config)[pool.name]
    built.shutdown(wait=True)


def prepared(pool: PoolConfig, preprocessor: Preprocessor, rid: str, adapter: str) -> PreparedRequest:
    question = f"Name three things a {rid} assistant helps with."
    request = ChatRequest(rid, (Message(Role.USER, (TextPart(question),)),), identity=Identity(rid))
    prepared = dataclasses.replace(preprocessor.prepare(request, pool), adapter=adapter)
    sampling = dataclasses.replace(prepared.sampling, temperature=0.0, max_output_tokens=24, logprobs=True)
    return dataclasses.replace(prepared, sampling=sampling)


async def test_a_mixed_batch_answers_as_the_merged_models_do(engine, pool, references) -> None:
    replica, preprocessor = engine
    requests = [prepared(pool, preprocessor, f"q-{name or 'base'}", name) for name in (*ADAPTERS, "")]

    async def answer(request: PreparedRequest) -> list[int]:
        return [p.chosen.token_id async for chunk in replica.generate(request) for p in chunk.logprobs]

    answers = await asyncio.gather(*(answer(r) for r in requests))
    for request, tokens in zip(requests, answers, strict=True):
        with torch.no_grad():
            out = references[request.adapter].generate(
                torch.tensor([request.prompt_token_ids]), max_new_tokens=len(tokens), do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
        assert tokens == out[0, request.num_prompt_tokens :].tolist(), request.adapter
    assert len({tuple(tokens) for tokens in answers}) == len(answers)  # each adapter answers its own way
    assert replica.adapters.metrics.loads == {name: 1 for name in ADAPTERS}


async def test_a_mixed_prefill_step_gives_each_row_its_merged_models_logits(engine, hf, references) -> None:
    replica, _ = engine
    slots = {name: await replica.adapters.acquire(name) for name in ADAPTERS}  # loaded, and held while we run
    try:
        names = ["health", "", "shopping", "glasses", "health"]  # interleaved: the rows are regrouped by slot
        prompts = [list(range(300 + 11 * i, 300 + 11 * i + 18 + 5 * i)) for i in range(len(names))]
        sequences, next_block = [], 0  # the engine is idle and caches no prefix: every block is free
        for i, (prompt, name) in enumerate(zip(prompts, names, strict=True)):
            blocks = tuple(range(next_block, next_block + -(-len(prompt) // 16)))
            next_block += len(blocks)
            slot = slots[name] if name else -1
            sequences.append(ScheduledSequence(f"r{i}", 0, tuple(prompt), blocks, True, lora_slot=slot))
        executor = replica.runner.executor
        logits = await replica.runner.call(executor.execute, SchedulerPlan(tuple(sequences), ()))
    finally:
        for slot in slots.values():
            replica.adapters.release(slot)
    for i, (prompt, name) in enumerate(zip(prompts, names, strict=True)):
        with torch.no_grad():
            expected = references[name](torch.tensor([prompt])).logits[0, -1]
            base = hf(torch.tensor([prompt])).logits[0, -1]
        assert (logits[i] - expected).abs().max().item() < TOLERANCE, (i, name)
        if name:
            assert (expected - base).abs().max().item() > 0.1  # the adapter does change the answer
