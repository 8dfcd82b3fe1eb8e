"""Prompt log probabilities, n answers from one prefill, min_tokens and ignore_eos, against the
dummy model and a full-recompute reference."""

from __future__ import annotations

import asyncio
import math
import random

import pytest
import torch

from museserve.engine.engine import MuseEngine
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.model.muse import MuseForCausalLM
from museserve.modes.parallel_choices import ParallelChoices
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.loading import load_pool_model
from tests.reference_kv_cache import SequenceKVCache, reference_logits
from tests.support import prepared_request
from tests.unit.test_engine import greedy_reference, pool_config, random_prompt


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def model(tokenizer: MuseTokenizer) -> MuseForCausalLM:
    return load_pool_model(pool_config(), tokenizer.vocab_size)


@torch.inference_mode()
def reference_prompt_logprobs(model: MuseForCausalLM, prompt: list[int]) -> torch.Tensor:
    """[len(prompt) - 1, vocab]: row p is the log-softmax after prompt[: p + 1]."""
    cache = SequenceKVCache.for_model(model.config)
    logits = reference_logits(model, torch.tensor(prompt), torch.arange(len(prompt)), cache)
    return logits[:-1].float().log_softmax(dim=-1)


async def chunks_of(engine: MuseEngine, request: PreparedRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


async def test_prompt_logprobs_equal_the_reference_over_chunks_and_a_cached_prefix(model, tokenizer):
    engine = build_engine(pool_config(max_prefill_chunk=8), MuseFormat(tokenizer))
    prompt = random_prompt(random.Random(21), 37)  # five chunks of 8
    try:
        await chunks_of(engine, prepared_request("warm", prompt, max_output_tokens=2))  # its blocks are now cached
        chunks = await chunks_of(engine, prepared_request("scored", prompt, max_output_tokens=3, prompt_logprobs=2))
    finally:
        engine.shutdown()
    scored = [c.prompt_logprobs for c in chunks if c.prompt_logprobs]
    assert len(scored) == 1 and chunks[0].prompt_logprobs, "sent once, in the first chunk"
    positions = scored[0]
    assert [p.chosen.token_id for p in positions] == prompt
    assert math.isnan(positions[0].chosen.logprob) and positions[0].top == ()
    expected = reference_prompt_logprobs(model, prompt)
    for p, position in enumerate(positions[1:]):
        assert position.chosen.logprob == pytest.approx(float(expected[p, prompt[p + 1]]), abs=1e-4)
        best = expected[p].topk(2)
        assert [t.token_id for t in position.top] == best.indices.tolist()
    assert chunks[-1].usage.cached_tokens == 0, "a scored prompt is computed in full, not read from the cache"
    assert "".join(c.text for c in chunks) == "".join(c.text for c in await _fresh_greedy(tokenizer, prompt, 3)), (
        "scoring changes nothing about the answer"
    )


async def _fresh_greedy(tokenizer: MuseTokenizer, prompt: list[int], n: int) -> list[GenerationChunk]:
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    try:
        return await chunks_of(engine, prepared_request("plain", prompt, max_output_tokens=n))
    finally:
        engine.shutdown()


async def test_prompt_logprobs_of_requests_that_share_a_batch(model, tokenizer):
    engine = build_engine(pool_config(max_prefill_chunk=8), MuseFormat(tokenizer))
    rng = random.Random(5)
    prompts = [random_prompt(rng, n) for n in (3, 19, 26)]
    requests = [prepared_request(f"b{i}", p, max_output_tokens=2, prompt_logprobs=0) for i, p in enumerate(prompts)]
    try:
        results = await asyncio.gather(*(chunks_of(engine, r) for r in requests))
    finally:
        engine.shutdown()
    for prompt, chunks in zip(prompts, results, strict=True):
        positions = chunks[0].prompt_logprobs
        expected = reference_prompt_logprobs(model, prompt)
        got = [p.chosen.logprob for p in positions[1:]]
        assert got == pytest.approx([float(expected[p, prompt[p + 1]]) for p in range(len(prompt) - 1)], abs=1e-4)


async def test_n_answers_share_one_prefill_and_each_equals_its_own_request(tokenizer):
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    prompt = random_prompt(random.Random(8), 41)
    sampled = dict(temperature=1.0, seed=7, max_output_tokens=6)
    try:
        chunks = [c async for c in ParallelChoices(engine).generate(prepared_request("n3", prompt, n=3, **sampled))]
        alone = [await chunks_of(engine, prepared_request(f"one{i}", prompt, seed=7 + i, temperature=1.0,
                                                          max_output_tokens=6)) for i in range(3)]  # fmt: skip
    finally:
        engine.shutdown()
    texts = {i: "".join(c.text for c in chunks if c.choice == i) for i in range(3)}
    ends = [c for c in chunks if c.choice_finish is not None]
    assert sorted(c.choice for c in ends) == [0, 1, 2]
    assert chunks[-1].finish is not None and all(c.finish is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert usage.prompt_tokens == 41 and usage.output_tokens == 18
    for i in range(3):
        assert texts[i] == "".join(c.text for c in alone[i]), "answer i is seed + i's own answer"
    # Answers 1 and 2 start after answer 0's prefill: the cache serves every full block.
    assert [c.usage.cached_tokens for c in sorted(ends, key=lambda c: c.choice)] == [0, 40, 40]


async def test_min_tokens_holds_back_the_end_and_ignore_eos_passes_it(model, tokenizer):
    markers = MuseFormat(tokenizer).markers
    prompt = random_prompt(random.Random(2), 9)
    eos = min(markers.stop_ids)
    engine = build_engine(pool_config(), MuseFormat(tokenizer))
    try:
        # Greedy with the end token as a stop id that would end it at once; min_tokens holds it back.
        first = greedy_reference(model, prompt, 1)[0]
        ended = await chunks_of(engine, prepared_request("ends", prompt, stop_token_ids=(first,), max_output_tokens=8))
        held = await chunks_of(
            engine, prepared_request("held", prompt, stop_token_ids=(first,), min_tokens=5, max_output_tokens=8)
        )
        past = await chunks_of(engine, prepared_request("past", prompt, ignore_eos=True, max_output_tokens=8))
    finally:
        engine.shutdown()
    assert ended[-1].usage.output_tokens == 1
    assert held[-1].usage.output_tokens >= 5
    assert past[-1].usage.output_tokens == 8 and past[-1].finish == "length"
    assert eos in markers.stop_ids
