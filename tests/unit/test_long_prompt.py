"""A 32K-token prompt through the engine (chunked paged prefill, then decode) against one dense
causal pass over the whole prompt and a plain cache for the decode."""

from __future__ import annotations

import random

import pytest
import torch

from museserve.config import PoolConfig
from museserve.model.muse import MuseForCausalLM
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.loading import load_pool_model
from tests.reference_kv_cache import SequenceKVCache, reference_logits
from tests.support import prepared_request

PROMPT_TOKENS = 32_768
OUTPUT_TOKENS = 4
POOL = PoolConfig(
    name="muse-long",
    model={"device": "cpu"},
    engine={
        "context_length": 40_000,
        "max_output_tokens": 64,
        "default_max_output_tokens": 16,
        "block_size": 16,
        "max_prefill_chunk": 512,
        "max_batched_tokens": 2048,
        "kv_cache_bytes": 24 << 20,  # muse-tiny: 512 bytes a token, 49,152 tokens
        "stream_interval_ms": 0,
    },
)


@torch.inference_mode()
def dense_greedy(model: MuseForCausalLM, prompt: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their log-probabilities: the prompt in one causal pass, then one token a step."""
    cache = SequenceKVCache.for_model(model.config)
    hidden = model(model.embed(torch.tensor(prompt)), torch.arange(len(prompt)), cache)
    logits = model.compute_logits(hidden[-1:])[-1]  # the last row only: 32K rows of logits are GBs
    tokens: list[int] = []
    logprobs: list[float] = []
    for _ in range(n):
        token = int(logits.argmax())
        tokens.append(token)
        logprobs.append(float(logits.log_softmax(-1)[token]))
        position = len(prompt) + len(tokens) - 1
        logits = reference_logits(model, torch.tensor([token]), torch.tensor([position]), cache)[-1]
    return tokens, logprobs


async def test_a_32k_prompt_equals_dense_attention() -> None:
    tokenizer = MuseTokenizer.load(None)
    rng = random.Random(7)
    prompt = [rng.randrange(32, 8000) for _ in range(PROMPT_TOKENS)]
    engine = build_engine(POOL, MuseFormat(tokenizer))
    request = prepared_request("long", prompt, max_output_tokens=OUTPUT_TOKENS, logprobs=True)
    positions = []
    try:
        async for chunk in engine.generate(request):
            positions.extend(chunk.logprobs)
    finally:
        engine.shutdown()
    tokens, logprobs = dense_greedy(load_pool_model(POOL, tokenizer.vocab_size), prompt, OUTPUT_TOKENS)
    assert [p.chosen.token_id for p in positions] == tokens
    assert [p.chosen.logprob for p in positions] == pytest.approx(logprobs, abs=1e-3)
