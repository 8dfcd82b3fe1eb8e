"""Both proposers on the real checkpoint (SmolLM2-135M, the shipped pool), in the engine: an
answer that quotes its prompt is the plain greedy answer token for token. The draft model is the
same GGUF loaded a second time as its own draft (the only real checkpoint at hand that shares the
tokenizer): its KV cache, catch-up and proposals then run on real weights, and it is almost
always right."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from museserve.config import PoolConfig, load_config
from museserve.config.speculative import SpeculativeConfig
from museserve.domain import ChatRequest, Identity, Message, Role, TextPart
from museserve.messages import PreparedRequest
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from tests.real_model import SMOLLM2_GGUF

CONFIG = Path(__file__).resolve().parents[2] / "deploy/local/museserve.yaml"
POOL = "smollm2-135m"
CODE = (
    "def merge(left, right):\n    result = []\n    i = j = 0\n    while i < len(left) and j < len(right):\n"
    "        if left[i] <= right[j]:\n            result.append(left[i])\n            i += 1\n"
    "        else:\n            result.append(right[j])\n            j += 1\n"
    "    return result + left[i:] + right[j:]\n"
)
QUOTING = f"Rewrite this code with type hints added. Reply with the full code only.\n{CODE}"


@pytest.fixture(scope="module")
def shipped():
    config = load_config(CONFIG)
    pool = config.pool(POOL)
    return pool, pool_model(pool, config.preprocess.media, None).chat_format, Preprocessor.for_pools(config)[POOL]


def with_speculation(pool: PoolConfig, **fields) -> PoolConfig:
    engine = pool.engine.model_copy(update={"speculative": SpeculativeConfig(**fields)})
    return pool.model_copy(update={"engine": engine})


def request(shipped, rid: str) -> PreparedRequest:
    pool, _, preprocessor = shipped
    prepared = preprocessor.prepare(
        ChatRequest(rid, (Message(Role.USER, (TextPart(QUOTING),)),), identity=Identity(rid)), pool
    )
    return dataclasses.replace(
        prepared, sampling=dataclasses.replace(prepared.sampling, temperature=0.0, max_output_tokens=64, logprobs=True)
    )


async def answer(shipped, pool: PoolConfig) -> tuple[list[int], object]:
    engine = build_engine(pool, shipped[1])
    tokens: list[int] = []
    try:
        async for chunk in engine.generate(request(shipped, "q")):
            tokens.extend(p.chosen.token_id for p in chunk.logprobs)
    finally:
        engine.shutdown(wait=True)  # one engine (and OpenMP pool) at a time
    return tokens, engine.metrics


async def test_ngram_and_a_real_draft_model_keep_the_greedy_answer(shipped) -> None:
    pool = shipped[0]
    plain, _ = await answer(shipped, with_speculation(pool, method="off"))
    ngram, ngram_metrics = await answer(shipped, with_speculation(pool, method="ngram"))
    draft_model = {"load_format": "gguf", "path": SMOLLM2_GGUF, "dtype": pool.model.dtype}
    drafted, draft_metrics = await answer(shipped, with_speculation(pool, method="draft", draft=draft_model))
    assert len(plain) > 20
    assert ngram == plain and drafted == plain
    assert ngram_metrics.spec_accepted_tokens > 0
    assert draft_metrics.spec_draft_tokens > 20 and draft_metrics.spec_acceptance_rate > 0.9
