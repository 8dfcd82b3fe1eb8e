"""Prompt log probabilities on the real model (SmolLM2-135M-Instruct, the shipped default
pool) through `/v1/completions` with `echo` and `logprobs`, as evaluation harnesses read them,
against transformers' log-softmax on the same weights (`tests/real_model.py`) for the same
token ids.

Tolerance: the pool runs in its configured dtype (float32 in the shipped config) with paged
attention and another summation order than transformers' eager path. In float32 the two
differed by at most 2.5e-5 over these prompts when measured; 5e-4 leaves a 20x margin. A
half-precision pool (8 or 11 mantissa bits, and a half-precision KV cache) is held to 0.15
and 0.05.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
import torch

from museserve.config import MuseServeConfig
from museserve.preprocess.pool_model import pool_model
from tests.real_model import smollm2_hf_model

from .conftest import REAL_POOL, TEST_KEY

pytestmark = pytest.mark.integration

TOLERANCE = {"float32": 5e-4, "float16": 0.05, "bfloat16": 0.15}
TEXTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "A longer one: " + " ".join(["the quick brown fox jumps over the lazy dog"] * 20),  # 184 tokens
)
ALTERNATIVES = 3


@pytest.fixture(scope="module")
def tokenizer(app_config: MuseServeConfig):
    return pool_model(app_config.pool(REAL_POOL), app_config.preprocess.media).chat_format.tokenizer


@pytest.fixture(scope="module")
def tolerance(app_config: MuseServeConfig) -> float:
    pool = app_config.pool(REAL_POOL)
    return max(TOLERANCE[pool.model.dtype], TOLERANCE[pool.kv_cache_dtype])


@pytest.fixture
def oai(app_config: MuseServeConfig) -> Iterator[openai.OpenAI]:
    base_url = f"http://127.0.0.1:{app_config.server.http_port}/v1"
    with openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def hf():
    return smollm2_hf_model()


def reference(hf, ids: list[int]) -> torch.Tensor:
    """transformers' log-softmax over the vocabulary at each position: row p scores token p + 1."""
    with torch.inference_mode():
        logits = hf(torch.tensor([ids])).logits[0].float()
    return logits.log_softmax(dim=-1)


@pytest.mark.parametrize("text", TEXTS)
def test_echoed_prompt_logprobs_equal_transformers(oai: openai.OpenAI, tokenizer, hf, tolerance: float, text: str):
    ids = tokenizer.encode_prompt(text)
    completion = oai.completions.create(
        model=REAL_POOL, prompt=ids, echo=True, logprobs=ALTERNATIVES, max_tokens=1, temperature=0
    )
    logprobs = completion.choices[0].logprobs
    assert completion.usage.prompt_tokens == len(ids)
    assert logprobs.tokens[: len(ids)] == [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    expected = reference(hf, ids)
    for p in range(1, len(ids)):
        row = expected[p - 1]
        assert logprobs.token_logprobs[p] == pytest.approx(row[ids[p]].item(), abs=tolerance), p
        top = logprobs.top_logprobs[p]
        assert max(top.values()) == pytest.approx(row.max().item(), abs=tolerance), p  # the most likely token's
        assert len(top) >= ALTERNATIVES


def test_a_text_prompt_scores_as_its_token_ids(oai: openai.OpenAI, tokenizer, tolerance: float):
    text = TEXTS[0]
    by_text = oai.completions.create(model=REAL_POOL, prompt=text, echo=True, logprobs=0, max_tokens=1, temperature=0)
    by_ids = oai.completions.create(
        model=REAL_POOL, prompt=tokenizer.encode_prompt(text), echo=True, logprobs=0, max_tokens=1, temperature=0
    )
    assert by_text.choices[0].text.startswith(text)
    a, b = by_text.choices[0].logprobs, by_ids.choices[0].logprobs
    assert a.tokens == b.tokens
    assert a.token_logprobs[1:] == pytest.approx(b.token_logprobs[1:], abs=tolerance)
