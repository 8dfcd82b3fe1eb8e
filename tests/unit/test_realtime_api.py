"""The Realtime WebSocket end to end in one process: the official `openai` client's
`client.realtime.connect` over a real socket to a gateway whose pool is a real muse-tiny engine
(no Ray), with real voice sessions. Turns ended by the client and by server VAD, answers with
usage, later turns served from the cached history, and a refused open the client can fix."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import openai
import openai.types.realtime as ga
from fastapi import FastAPI, WebSocket

from museserve.api.openai.realtime import RealtimeApi
from museserve.config import MuseServeConfig
from museserve.gateway.gateway import Gateway
from museserve.preprocess.pool_model import pool_model
from museserve.replica import build_engine
from tests.realtime_scripted import serving
from tests.support import text_preprocess
from tests.voice_support import POOL, chunks, speech, voice_config

TIMEOUT_S = 60
GA_FORMAT_16K = {"format": {"type": "audio/pcm", "rate": 16000}}


@asynccontextmanager
async def realtime_client(config: MuseServeConfig) -> AsyncIterator[Any]:
    """A connection of the official client to the Realtime route over a muse-tiny gateway."""
    pool = config.pools[0]
    media = config.preprocess.media
    engine = build_engine(pool, pool_model(pool, media, None).chat_format, media=media)
    api = RealtimeApi(Gateway(config, text_preprocess(config), {POOL: engine}))
    app = FastAPI()

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        await api.connect(websocket)

    try:
        async with serving(app) as base_url:
            client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-any", max_retries=0)
            async with client.realtime.connect(model=POOL) as conn:
                assert isinstance(await conn.recv(), ga.SessionCreatedEvent)
                yield conn
    finally:
        engine.shutdown()


async def until(conn: Any, kind: str) -> list[Any]:
    events = []
    while True:
        events.append(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
        if events[-1].type == kind:
            return events


async def say(conn: Any, samples: np.ndarray, rate: int, ms: float = 20) -> None:
    for data in chunks(samples, rate=rate, ms=ms):
        await conn.input_audio_buffer.append(audio=base64.b64encode(data).decode())


def answer_of(events: list[Any]) -> tuple[str, ga.RealtimeResponse]:
    text = "".join(e.delta for e in events if isinstance(e, ga.ResponseTextDeltaEvent))
    done = events[-1]
    assert isinstance(done, ga.ResponseDoneEvent)
    return text, done.response


async def test_client_turns_are_answered_and_later_turns_reuse_the_cached_history():
    async with realtime_client(voice_config()) as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Answer the question you hear.",
                                           "max_output_tokens": 12,
                                           "audio": {"input": {**GA_FORMAT_16K, "turn_detection": None}}})  # fmt: skip
        assert (await conn.recv()).type == "session.updated"
        answers = []
        for seed in (1, 2):
            await say(conn, speech(1.5, seed=seed), 16000)
            await conn.input_audio_buffer.commit()
            assert [e.type for e in await until(conn, "input_audio_buffer.committed")] == [
                "input_audio_buffer.committed"
            ]
            await conn.response.create()
            answers.append(answer_of(await until(conn, "response.done")))
    (first_text, first), (_, second) = answers
    assert first_text and first.output[0].content[0].text == first_text  # type: ignore[union-attr]
    assert first.status == "incomplete" and first.status_details.reason == "max_output_tokens"  # type: ignore[union-attr]
    assert first.usage.output_tokens == 12 and first.usage.input_tokens > 38  # type: ignore[union-attr]  # 1.5 s: 38 audio tokens
    assert second.usage.input_tokens > first.usage.input_tokens + 38  # type: ignore[union-attr]
    assert second.usage.input_token_details.cached_tokens >= first.usage.input_tokens - 16  # type: ignore[union-attr]


async def test_server_vad_at_openais_default_rate_ends_the_turn_and_answers():
    async with realtime_client(voice_config()) as conn:
        await say(conn, speech(1.5, seed=3, rate=24000), 24000, ms=100)
        events: list[Any] = []
        silence = np.zeros(2400, "<i2")  # 100 ms at 24 kHz, sent until the server hears the end
        while not any(e.type == "input_audio_buffer.speech_stopped" for e in events):
            await say(conn, silence, 24000, ms=100)
            try:
                while True:
                    events.append(await asyncio.wait_for(conn.recv(), 0.3))
            except TimeoutError:
                pass
        if not any(e.type == "response.done" for e in events):
            events += await until(conn, "response.done")
    events = events[: [e.type for e in events].index("response.done") + 1]
    kinds = [e.type for e in events]
    assert kinds[:3] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed"]  # fmt: skip
    assert kinds[3:6] == ["response.created", "response.output_item.added", "response.content_part.added"]
    text, response = answer_of(events)
    assert response.status in ("completed", "incomplete") and response.usage.output_tokens > 0  # type: ignore[union-attr]
    assert response.output[0].content[0].text == text  # type: ignore[union-attr]


async def test_a_refused_open_names_the_setting_and_the_client_can_fix_it():
    async with realtime_client(voice_config()) as conn:
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 100_000,
                                           "audio": {"input": {**GA_FORMAT_16K, "turn_detection": None}}})  # fmt: skip
        await conn.recv()
        await say(conn, speech(0.2), 16000, ms=100)
        refused = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert isinstance(refused, ga.RealtimeErrorEvent) and refused.error.param == "session.max_output_tokens"
        await conn.recv()  # the second chunk is refused the same way
        await conn.session.update(session={"type": "realtime", "max_output_tokens": 4})
        assert (await conn.recv()).type == "session.updated"
        await say(conn, speech(0.5, seed=4), 16000)
        await conn.response.create()
        text, response = answer_of(await until(conn, "response.done"))
        assert response.usage.output_tokens == 4  # type: ignore[union-attr]


async def test_silence_after_the_end_of_speech_does_not_cut_the_answer():
    async with realtime_client(voice_config()) as conn:
        await say(conn, speech(1.0, seed=5, rate=24000), 24000, ms=100)
        await say(conn, np.zeros(24000 * 2, "<i2"), 24000, ms=100)  # a microphone keeps streaming
        _, response = answer_of(await until(conn, "response.done"))
    assert response.status != "cancelled"
