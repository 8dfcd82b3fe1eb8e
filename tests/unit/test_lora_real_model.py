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
from museserve.lora.peft_files import read_adapter
from museserve.messages import PreparedRequest
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from museserve.runner.loading import local_runner
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
def pool(adapter_dirs) -> PoolConfig:
    return PoolConfig(
        name="smollm2",
        model={"load_format": "gguf", "path": SMOLLM2_GGUF, "cpu_gemm": "onednn"},
        engine={"context_length": 2048, "max_output_tokens": 256, "default_max_output_tokens": 64,
                "kv_cache_bytes": 96 << 20},
        lora={"adapters": [{"name": n, "path": str(p)} for n, p in adapter_dirs.items()], "max_loaded_adapters": 4},
    )  # fmt: skip


def test_a_mixed_prefill_step_gives_each_row_its_merged_models_logits(hf, adapter_dirs, pool) -> None:
    runner = local_runner(pool, hf.config.vocab_size)
    names = list(ADAPTERS)
    for slot, name in enumerate(names):
        runner.lora.write(slot, read_adapter(name, str(adapter_dirs[name]), runner.model.config, pool.lora.max_rank))
    prompts = [list(range(300 + 11 * i, 300 + 11 * i + 18 + 5 * i)) for i in range(5)]
    slots = [0, -1, 1, 2, 0]  # adapters interleaved with a plain row: the rows are regrouped by slot
    sequences, next_block = [], 0
    for i, (prompt, slot) in enumerate(zip(prompts, slots, strict=True)):
        blocks = tuple(range(next_block, next_block + -(-len(prompt) // 16)))
        next_block += len(blocks)
        sequences.append(ScheduledSequence(f"r{i}", 0, tuple(prompt), blocks, True, lora_slot=slot))
    logits = runner.execute(SchedulerPlan(tuple(sequences), ()))
    for i, (prompt, slot) in enumerate(zip(prompts, slots, strict=True)):
        reference = hf if slot < 0 else merged(hf, adapter_dirs[names[slot]])
        with torch.no_grad():
            expected = reference(torch.tensor([prompt])).logits[0, -1]
            base = hf(torch.tensor([prompt])).logits[0, -1]
        assert (logits[i] - expected).abs().max().item() < TOLERANCE, (i, slot)
        if slot >= 0:
            assert (expected - base).abs().max().item() > 0.1  # the adapter does change the answer


def prepared(pool: PoolConfig, preprocessor: Preprocessor, rid: str, adapter: str) -> PreparedRequest:
    question = f"Name three things a {rid} assistant helps with."
    request = ChatRequest(rid, (Message(Role.USER, (TextPart(question),)),), identity=Identity(rid))
    prepared = dataclasses.replace(preprocessor.prepare(request, pool), adapter=adapter)
    sampling = dataclasses.replace(prepared.sampling, temperature=0.0, max_output_tokens=24, logprobs=True)
    return dataclasses.replace(prepared, sampling=sampling)


async def test_a_mixed_batch_answers_as_the_merged_models_do(hf, adapter_dirs, pool) -> None:
    from museserve.config import MuseServeConfig

    config = MuseServeConfig(pools=(pool,))
    chat_format = pool_model(pool, config.preprocess.media, None).chat_format
    preprocessor = Preprocessor.for_pools(config)[pool.name]
    requests = [prepared(pool, preprocessor, f"q-{name or 'base'}", name) for name in (*ADAPTERS, "")]
    engine = build_engine(pool, chat_format)

    async def answer(request: PreparedRequest) -> list[int]:
        return [t for chunk in [c async for c in engine.generate(request)] for t in chunk_tokens(chunk)]

    try:
        answers = await asyncio.gather(*(answer(r) for r in requests))
    finally:
        engine.shutdown(wait=True)
    for request, tokens in zip(requests, answers, strict=True):
        reference = merged(hf, adapter_dirs[request.adapter]) if request.adapter else hf
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([request.prompt_token_ids]), max_new_tokens=len(tokens), do_sample=False,
                eos_token_id=None, pad_token_id=0,
            )  # fmt: skip
        assert tokens == out[0, request.num_prompt_tokens :].tolist(), request.adapter
    assert len({tuple(tokens) for tokens in answers}) == len(answers)  # each adapter answers its own way
    assert engine.adapters.metrics.loads == {name: 1 for name in ADAPTERS}


def chunk_tokens(chunk) -> list[int]:
    return [p.chosen.token_id for p in chunk.logprobs]
