"""Speculative decoding changes how many tokens a step yields, never which: greedy requests give
the same tokens, texts, finishes and usage with n-gram or draft-model proposals as without, in a
busy batch of prefill chunks and decodes, through penalties, stop tokens, log probabilities, a
JSON grammar, the forced end of reasoning at the thinking budget, preemption and prefix hits.
Sampled requests keep their seeds: with n-gram proposals a seed gives the answer it gives without
speculation; with a draft model, the same seed gives the same text."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import torch

from museserve.config import PoolConfig
from museserve.domain import Mode, ResponseFormat, ResponseFormatKind
from museserve.engine.engine import MuseEngine
from museserve.messages import PreparedRequest
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.support import prepared_request

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}, "required": ["n"]}
NGRAM = {"method": "ngram", "max_batch": 16}
SAME_DRAFT = {"method": "draft", "max_batch": 16, "draft": {"size": "tiny", "seed": 0}}  # the target's own weights
OTHER_DRAFT = {"method": "draft", "max_batch": 16, "draft": {"size": "tiny", "seed": 1}}  # mostly rejected


def pool_config(speculative: dict, kv_cache_bytes: int = 1 << 20) -> PoolConfig:
    engine = {
        "context_length": 4096,
        "max_output_tokens": 256,
        "default_max_output_tokens": 16,
        "max_running_requests": 8,
        "max_batched_tokens": 48,
        "max_prefill_chunk": 16,
        "block_size": 4,
        "kv_cache_bytes": kv_cache_bytes,
        "min_context_per_request": 64,
        "stream_interval_ms": 0,
        "speculative": speculative,
    }
    return PoolConfig(name="muse-test", model={"device": "cpu"}, engine=engine)


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def repetitive_prompt(rng: random.Random) -> list[int]:
    """Words, then a phrase said several times: prompt lookup finds matches, and a random model
    soon repeats itself too."""
    phrase = [rng.randrange(32, 8000) for _ in range(rng.randrange(3, 8))]
    return [rng.randrange(32, 8000) for _ in range(rng.randrange(2, 12))] + phrase * rng.randrange(2, 5)


def greedy_workload(vocab_size: int) -> list[PreparedRequest]:
    rng = random.Random(23)
    requests = []
    for i in range(12):
        kind = i % 6
        fields: dict = {"max_output_tokens": rng.randrange(20, 60)}
        if kind == 1:
            fields.update(frequency_penalty=0.5, presence_penalty=0.3, repetition_penalty=1.2)
        elif kind == 2:
            fields.update(mode=Mode.THINKING, thinking_budget=rng.randrange(3, 12))  # the close marker is forced
        elif kind == 3:
            fields.update(logprobs=True, top_logprobs=3, stop_token_ids=tuple(range(40, vocab_size, 11)))
        elif kind == 4:
            fields.update(response_format=ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(SCHEMA)))
        elif kind == 5:
            fields.update(min_tokens=8, ignore_eos=True)
        requests.append(prepared_request(f"r{i}", repetitive_prompt(rng), **fields))
    return requests


async def outcome(engine: MuseEngine, request: PreparedRequest) -> tuple:
    text, reasoning, tokens, logprobs, finish, usage = [], [], [], [], None, None
    async for chunk in engine.generate(request):
        text.append(chunk.text)
        reasoning.append(chunk.reasoning)
        tokens.extend(p.chosen.token_id for p in chunk.logprobs)
        logprobs.extend(p.chosen.logprob for p in chunk.logprobs)
        finish, usage = chunk.finish or finish, chunk.usage or usage
    return ("".join(text), "".join(reasoning), tuple(tokens), finish, usage), logprobs


async def run(tokenizer: MuseTokenizer, speculative: dict, requests: list[PreparedRequest], **pool) -> tuple:
    engine = build_engine(pool_config(speculative, **pool), MuseFormat(tokenizer))
    try:
        results = await asyncio.gather(*(outcome(engine, r) for r in requests))
        assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # rolled-back slots were all freed
        assert not engine.requests
    finally:
        engine.shutdown()
    return [r[0] for r in results], [r[1] for r in results], engine.metrics


@pytest.mark.parametrize("speculative", [NGRAM, SAME_DRAFT, OTHER_DRAFT], ids=["ngram", "same-draft", "other-draft"])
@pytest.mark.parametrize("kv_cache_bytes", [1 << 20, 40 << 10], ids=["roomy", "preempting"])
async def test_greedy_output_is_unchanged_token_for_token(tokenizer, speculative: dict, kv_cache_bytes: int) -> None:
    requests = greedy_workload(tokenizer.vocab_size)
    plain, plain_logprobs, plain_metrics = await run(
        tokenizer, {"method": "off"}, requests, kv_cache_bytes=kv_cache_bytes
    )
    spec, spec_logprobs, metrics = await run(tokenizer, speculative, requests, kv_cache_bytes=kv_cache_bytes)
    assert spec == plain
    for ours, theirs in zip(spec_logprobs, plain_logprobs, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-4)
    assert {"stop", "length"} <= {str(result[3]) for result in plain}
    assert any(result[1] for result in plain)  # reasoning, closed by the forced marker
    assert metrics.spec_draft_tokens > 0
    if speculative is OTHER_DRAFT:
        assert metrics.spec_draft_tokens > 2 * metrics.spec_accepted_tokens  # mostly rejected: rolled back
    else:
        assert metrics.spec_accepted_tokens > 0
    if kv_cache_bytes < 1 << 20:
        assert sum(metrics.preemptions.values()) > 0 and sum(plain_metrics.preemptions.values()) > 0
    # Accepted tokens past a request's end are dropped, not counted.
    assert metrics.generation_tokens == plain_metrics.generation_tokens


async def test_seeded_sampling_with_ngram_proposals_gives_the_plain_answers(tokenizer) -> None:
    """An n-gram proposal is kept when the row's own draw is that token: each token takes one
    uniform of the request's generator, as in plain decoding, so the answers are the same."""
    rng = random.Random(31)
    requests = [
        prepared_request(f"s{i}", repetitive_prompt(rng), max_output_tokens=40, temperature=t, top_p=p, top_k=k, seed=i)
        for i, (t, p, k) in enumerate([(1.0, 1.0, 1), (0.3, 1.0, 2), (0.1, 0.9, 3), (1.0, 1.0, 0)] * 2)
    ]
    plain, _, _ = await run(tokenizer, {"method": "off"}, requests)
    spec, _, metrics = await run(tokenizer, NGRAM, requests)
    assert spec == plain
    assert metrics.spec_accepted_tokens > 0 and metrics.spec_draft_tokens > metrics.spec_accepted_tokens


async def test_a_stop_string_ends_the_answer_where_plain_decoding_ends_it(tokenizer) -> None:
    """Tokens a step accepted past a stop string are dropped: text, finish and usage match."""
    rng = random.Random(12)
    prompts = [repetitive_prompt(rng) for _ in range(4)]
    first, _, _ = await run(tokenizer, {"method": "off"}, [prepared_request(f"p{i}", p) for i, p in enumerate(prompts)])
    stops = [text[len(text) // 2 : len(text) // 2 + 3] for text, *_ in first]  # from the middle of each answer
    requests = [
        prepared_request(f"t{i}", p, max_output_tokens=60, stop=(stop,))
        for i, (p, stop) in enumerate(zip(prompts, stops, strict=True))
        if stop.strip()
    ]
    plain, _, _ = await run(tokenizer, {"method": "off"}, requests)
    spec, _, metrics = await run(tokenizer, NGRAM, requests)
    assert spec == plain
    assert all(str(result[3]) == "stop" for result in plain)
    assert metrics.spec_draft_tokens > 0


async def test_prefix_hits_and_speculation_together(tokenizer) -> None:
    rng = random.Random(5)
    prompt = repetitive_prompt(rng) * 3
    first, again = (prepared_request(rid, prompt, max_output_tokens=40) for rid in ("first", "again"))
    engine = build_engine(pool_config(NGRAM), MuseFormat(tokenizer))
    try:
        warm, _ = await outcome(engine, first)
        hit, _ = await outcome(engine, again)
    finally:
        engine.shutdown()
    plain, _, _ = await run(tokenizer, {"method": "off"}, [prepared_request("plain", prompt, max_output_tokens=40)])
    assert hit[4].cached_tokens > 0
    assert warm[:4] == hit[:4] == plain[0][:4]
    assert engine.metrics.spec_accepted_tokens > 0


async def test_the_same_seed_gives_the_same_text(tokenizer) -> None:
    rng = random.Random(9)
    prompt = repetitive_prompt(rng)
    engine = build_engine(pool_config(NGRAM), MuseFormat(tokenizer))
    try:
        runs = [
            await outcome(engine, prepared_request(f"s{i}", prompt, max_output_tokens=60, temperature=0.7, seed=42))
            for i in range(2)
        ]
        other, _ = await outcome(engine, prepared_request("s3", prompt, max_output_tokens=60, temperature=0.7, seed=7))
    finally:
        engine.shutdown()
    assert runs[0][0][0] == runs[1][0][0] != other[0]
    assert engine.metrics.spec_draft_tokens > 0


async def test_a_request_may_turn_speculation_off(tokenizer) -> None:
    prompt = repetitive_prompt(random.Random(2))
    engine = build_engine(pool_config(NGRAM), MuseFormat(tokenizer))
    try:
        await outcome(engine, prepared_request("off", prompt, max_output_tokens=40, speculative=False))
        assert engine.metrics.spec_drafts == 0
        await outcome(engine, prepared_request("on", prompt, max_output_tokens=40))
        assert engine.metrics.spec_drafts > 0
    finally:
        engine.shutdown()


async def test_a_large_batch_does_not_speculate(tokenizer) -> None:
    rng = random.Random(4)
    requests = [prepared_request(f"b{i}", repetitive_prompt(rng), max_output_tokens=30) for i in range(8)]
    _, _, metrics = await run(tokenizer, {"method": "ngram", "max_batch": 2}, requests)
    alone, _, alone_metrics = await run(tokenizer, {"method": "ngram", "max_batch": 2}, requests[:1])
    assert alone_metrics.spec_drafts > 0
    # Only steps with at most 2 running requests speculated: the batch's start and its tail.
    assert metrics.spec_drafts < 8 * alone_metrics.spec_drafts


async def test_rejected_proposals_leave_the_kv_cache_as_plain_decoding_writes_it(tokenizer) -> None:
    """Every full block of the finished sequences, found by its content hash in the prefix cache,
    holds the same keys and values in both engines, though one wrote rejected proposals there."""
    rng = random.Random(17)
    requests = [prepared_request(f"k{i}", repetitive_prompt(rng), max_output_tokens=48) for i in range(4)]
    pools = {}
    for name, speculative in (("plain", {"method": "off"}), ("spec", NGRAM)):
        engine = build_engine(pool_config(speculative), MuseFormat(tokenizer))
        try:
            await asyncio.gather(*(outcome(engine, r) for r in requests))
        finally:
            engine.shutdown(wait=True)
        pools[name] = (dict(engine.blocks._cached), engine.runner.executor.pool, engine.metrics)
    plain_cached, plain_pool, _ = pools["plain"]
    spec_cached, spec_pool, metrics = pools["spec"]
    assert metrics.spec_draft_tokens > metrics.spec_accepted_tokens > 0  # proposals were rejected
    assert plain_cached.keys() == spec_cached.keys()
    bs = plain_pool.block_size
    for block_hash, plain_block in plain_cached.items():
        ours = torch.arange(spec_cached[block_hash] * bs, (spec_cached[block_hash] + 1) * bs)
        theirs = torch.arange(plain_block * bs, (plain_block + 1) * bs)
        for layer in range(len(plain_pool.keys)):
            torch.testing.assert_close(spec_pool.keys[layer][ours], plain_pool.keys[layer][theirs], atol=1e-6, rtol=0)
            torch.testing.assert_close(
                spec_pool.values[layer][ours], plain_pool.values[layer][theirs], atol=1e-6, rtol=0
            )


async def test_a_speculated_first_token_is_distributed_as_the_targets_own(tokenizer) -> None:
    """The prompt ends with a phrase it said before, so prompt lookup proposes what followed it
    for the very first token; over 400 seeds, that token is distributed as the target's top-6
    distribution (chi-square at 1e-3, see test_speculative_verify)."""
    from museserve.runner.loading import load_pool_model
    from museserve.runner.sampler import filtered_probs
    from tests.reference_kv_cache import SequenceKVCache, reference_logits
    from tests.unit.test_speculative_verify import SIGNIFICANCE, chi_square_p_value

    pool = pool_config({"method": "ngram", "max_batch": 64})
    model = load_pool_model(pool, tokenizer.vocab_size)
    phrase = [901, 902, 903]
    follower = 1000
    for _ in range(10):  # a proposal the target's top 6 holds, so it is kept at times
        prompt = [700, 701, *phrase, follower, 702, *phrase]
        with torch.inference_mode():
            cache = SequenceKVCache.for_model(model.config)
            logits = reference_logits(model, torch.tensor(prompt), torch.arange(len(prompt)), cache)[-1]
        p = filtered_probs(logits[None], 1.0, 1.0, 6)[0]
        if p[follower] > 0.05:
            break
        follower = int(p.argmax())
    assert p[follower] > 0.05
    engine = build_engine(pool, MuseFormat(tokenizer))
    counts = torch.zeros(tokenizer.vocab_size)
    requests = [
        prepared_request(f"d{seed}", prompt, max_output_tokens=2, temperature=1.0, top_k=6, seed=seed, logprobs=True)
        for seed in range(400)
    ]
    try:
        for start in range(0, len(requests), 100):  # within the replica's queue
            batch = requests[start : start + 100]
            for request_outcome, _ in await asyncio.gather(*(outcome(engine, r) for r in batch)):
                counts[request_outcome[2][0]] += 1
    finally:
        engine.shutdown()
    assert engine.metrics.spec_drafts >= 400  # every first token was a verified proposal
    assert 0 < counts[follower] < 400
    assert chi_square_p_value(counts, p) > SIGNIFICANCE


async def test_a_draft_with_the_targets_weights_is_almost_always_right(tokenizer) -> None:
    """The draft's KV stays in step with the target's through catch-up after non-speculating
    steps, full acceptance and prefix hits: a draft with the target's own weights proposes what
    the target picks (all but float-rounding ties)."""
    rng = random.Random(8)
    prompts = [repetitive_prompt(rng) for _ in range(3)]
    engine = build_engine(pool_config({**SAME_DRAFT, "max_batch": 2}), MuseFormat(tokenizer))
    try:
        # Three at once: none speculates until the shortest ends, then the others catch up and do.
        await asyncio.gather(
            *(
                outcome(engine, prepared_request(f"a{i}", p, max_output_tokens=20 + 30 * i))
                for i, p in enumerate(prompts)
            )
        )
        for i, prompt in enumerate(prompts):  # prefix hits
            await outcome(engine, prepared_request(f"b{i}", prompt, max_output_tokens=50))
    finally:
        engine.shutdown()
    metrics = engine.metrics
    assert metrics.spec_draft_tokens > 100
    assert metrics.spec_acceptance_rate > 0.95
