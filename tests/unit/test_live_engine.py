"""A live request in the engine: its prompt grows while it runs (speech arriving as audio
tokens), is prefilled as it grows, and once closed answers exactly as the same prompt sent
whole. Also: what a refused extension leaves, an open request's blocks, a vanished client."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from museserve.config import PoolConfig
from museserve.domain import AudioPart, ChatRequest, Message, Role, SamplingParams, TextPart
from museserve.engine.engine import MuseEngine
from museserve.errors import InvalidArgument, NotFound
from museserve.messages import MediaSegment, PreparedRequest
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.media_samples import SMALL_MEDIA as MEDIA
from tests.media_samples import wav_bytes

POOL = PoolConfig(
    name="muse-mm",
    model={"device": "cpu"},
    engine={"context_length": 1024, "max_output_tokens": 64, "default_max_output_tokens": 12, "block_size": 4,
            "max_prefill_chunk": 8},
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def whole(tokenizer: MuseTokenizer) -> PreparedRequest:
    pre = Preprocessor(PoolModel.muse(tokenizer), MEDIA, request_timeout_s=60)
    parts = (TextPart("listen"), AudioPart(wav_bytes(2.0, 330.0), "wav"))
    request = ChatRequest(
        request_id="whole", messages=(Message(Role.USER, parts),), sampling=SamplingParams(temperature=0.0)
    )
    return pre.prepare(request, POOL)


def split(whole: PreparedRequest) -> tuple[list[int], MediaSegment, list[int]]:
    """(prompt before the audio, the audio segment, prompt after it)."""
    (segment,) = whole.media
    ids = list(whole.prompt_token_ids)
    return ids[: segment.start], segment, ids[segment.start + segment.num_tokens :]


def pieces(whole: PreparedRequest, sizes: list[int]) -> list[tuple[list[int], MediaSegment]]:
    """The audio segment cut into runs of `sizes` tokens: (placeholder ids, a segment starting at 0)."""
    (segment,) = whole.media
    placeholder = whole.prompt_token_ids[segment.start]
    row = segment.feature_dim * 2
    out, at = [], 0
    for n in sizes:
        n = min(n, segment.num_tokens - at)
        if n == 0:
            break
        rows = segment.features[at * row : (at + n) * row]
        out.append(([placeholder] * n, MediaSegment(segment.kind, 0, n, segment.feature_dim, rows, f"d{at}")))
        at += n
    assert at == segment.num_tokens, "sizes cover the segment"
    return out


async def answer(engine: MuseEngine, request: PreparedRequest) -> tuple[str, int]:
    chunks = [c async for c in engine.generate(request)]
    return "".join(c.text for c in chunks), chunks[-1].usage.prompt_tokens


async def live_answer(engine: MuseEngine, whole: PreparedRequest, sizes: list[int], settle: bool) -> tuple[str, int]:
    before, _, after = split(whole)
    opened = dataclasses.replace(whole, request_id="live", prompt_token_ids=tuple(before), media=())
    stream = engine.generate(opened, live=True)
    first = await anext(stream)
    assert first.text == "" and first.finish is None
    for ids, piece in pieces(whole, sizes):
        await engine.extend("live", ids, (piece,))
        if settle:  # let the engine prefill what has come before more arrives
            for _ in range(50):
                await asyncio.sleep(0.005)
                if engine.requests["live"].seq.num_computed_tokens == engine.requests["live"].seq.num_tokens - 1:
                    break
    seq = engine.requests["live"].seq
    assert seq.num_output_tokens == 0  # nothing sampled while the prompt is open
    await engine.extend("live", after, close=True)
    chunks = [c async for c in stream]
    return "".join(c.text for c in chunks), chunks[-1].usage.prompt_tokens


@pytest.mark.parametrize(("sizes", "settle"), [([1] * 60, True), ([7, 3, 11, 50], True), ([60], False)])
async def test_a_live_prompt_grown_in_pieces_answers_as_the_whole_prompt(
    tokenizer: MuseTokenizer, whole: PreparedRequest, sizes: list[int], settle: bool
) -> None:
    engine = build_engine(POOL, MuseFormat(tokenizer), media=MEDIA)
    try:
        expected = await answer(engine, dataclasses.replace(whole, request_id="a"))
        engine.blocks.drop_prefix_cache()  # the live request computes its own KV
        got = await live_answer(engine, whole, sizes, settle)
    finally:
        engine.shutdown()
    assert got == expected
    assert expected[1] == whole.num_prompt_tokens


async def test_the_open_prompt_is_prefilled_before_it_closes(tokenizer: MuseTokenizer, whole: PreparedRequest) -> None:
    engine = build_engine(POOL, MuseFormat(tokenizer), media=MEDIA)
    before, _, _ = split(whole)
    try:
        stream = engine.generate(
            dataclasses.replace(whole, request_id="live", prompt_token_ids=tuple(before), media=()), live=True
        )
        await anext(stream)
        for ids, piece in pieces(whole, [5] * 12):
            await engine.extend("live", ids, (piece,))
        seq = engine.requests["live"].seq
        for _ in range(400):
            await asyncio.sleep(0.005)
            if seq.num_computed_tokens == seq.num_tokens - 1:
                break
        assert seq.num_computed_tokens == seq.num_tokens - 1  # all but the held-back token
        assert engine.scheduler.num_running == 1 and not engine.scheduler.schedule().sequences
        await stream.aclose()  # the client vanished: its blocks are free at once
        assert (
            "live" not in engine.requests and engine.blocks.num_free_blocks + held(engine) == engine.blocks.num_blocks
        )
    finally:
        engine.shutdown()


def held(engine: MuseEngine) -> int:
    """Blocks kept only by the prefix cache (reusable)."""
    return engine.blocks.num_blocks - engine.blocks.num_free_blocks if not engine.scheduler.running else 0


async def test_a_refused_extension_leaves_the_request_as_it_was(
    tokenizer: MuseTokenizer, whole: PreparedRequest
) -> None:
    engine = build_engine(POOL, MuseFormat(tokenizer), media=MEDIA)
    before, segment, after = split(whole)
    try:
        stream = engine.generate(
            dataclasses.replace(whole, request_id="live", prompt_token_ids=tuple(before), media=()), live=True
        )
        await anext(stream)
        seq = engine.requests["live"].seq
        with pytest.raises(InvalidArgument) as refused:
            await engine.extend("live", [5] * 1100)
        assert refused.value.field == "audio" and "context window" in refused.value.message
        bad = MediaSegment("audio", 0, 1, segment.feature_dim + 1, b"\0" * (segment.feature_dim + 1) * 2, "x")
        with pytest.raises(InvalidArgument):
            await engine.extend("live", [5], (bad,))
        assert seq.num_prompt_tokens == len(before) and seq.prompt_open
        with pytest.raises(NotFound):
            await engine.extend("nobody", [5])
        await engine.extend("live", after, close=True)
        assert [c async for c in stream][-1].finish is not None
    finally:
        engine.shutdown()
