"""The Realtime WebSocket driven by the official `openai` client (`client.realtime.connect`, and
the beta `client.beta.realtime.connect`) over a real socket: the gateway's app class and
middleware, a real `Gateway` for identity and models, and a scripted voice session. Turns in
both modes, barge-in, refusals that leave the connection open, and what closes it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import openai
import openai.types.beta.realtime as beta
import openai.types.realtime as ga
import pytest
import websockets
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect as ws_connect

from museserve.api.openai.body_limit import BodyLimit
from museserve.api.openai.http_api import install_error_handlers
from museserve.api.openai.realtime import RealtimeApi
from museserve.config import parse_config
from museserve.errors import Unavailable
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import key_digest
from museserve.serve.request_id_header import ServeIngressApp
from museserve.voice.events import VoiceSettings
from tests.realtime_scripted import ScriptedVoiceSession, serving
from tests.support import text_preprocess
from tests.unit.test_responses_http import ScriptedPool

KEY = "sk-realtime"
SPEECH = base64.b64encode(b"\x20\x03" * 4800).decode()  # 200 ms at 24 kHz
SILENCE = base64.b64encode(b"\x00\x00" * 4800).decode()
TIMEOUT_S = 10


class Voices:
    """Opens scripted voice sessions where `voice.entry.open_voice` opens real ones, keeping each."""

    def __init__(self) -> None:
        self.sessions: list[ScriptedVoiceSession] = []
        self.reply = ("Hello", " world")
        self.fail: Unavailable | None = None

    async def open(self, gateway: Gateway, settings: VoiceSettings) -> ScriptedVoiceSession:
        session = ScriptedVoiceSession(settings, self.reply)
        session.fail_with, session.fail_after = self.fail, 1
        self.sessions.append(session)
        return session


@pytest.fixture
def voices() -> Voices:
    return Voices()


@pytest.fixture
def app(voices: Voices) -> Iterator[FastAPI]:
    config = parse_config({"pools": [{"name": "main"}],
                           "gateway": {"auth": "api_key", "api_keys": [{"sha256": key_digest(KEY), "tenant": "a"}]}})  # fmt: skip
    gateway = Gateway(config, text_preprocess(config), {"main": ScriptedPool()})
    api = RealtimeApi(gateway, voices.open)
    app = ServeIngressApp()  # as the ingress builds it: its middleware must let WebSockets through
    install_error_handlers(app)
    app.add_middleware(BodyLimit)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        await api.connect(websocket)

    yield app


def client(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


async def until(connection: Any, kind: str) -> list[Any]:
    """Events up to and including the first of type `kind`."""
    events = []
    while True:
        event = await asyncio.wait_for(connection.recv(), TIMEOUT_S)
        events.append(event)
        if event.type == kind:
            return events


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def test_turns_without_detection_are_committed_and_answered_on_request(app: FastAPI, voices: Voices):
    async with serving(app) as base_url, client(base_url).realtime.connect(model="main") as conn:
        created = await conn.recv()
        assert isinstance(created, ga.SessionCreatedEvent) and created.session.model == "main"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "instructions": "Be brief.",
                                           "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                               "turn_detection": None}}})  # fmt: skip
        updated = await conn.recv()
        assert isinstance(updated, ga.SessionUpdatedEvent) and updated.session.audio.input.turn_detection is None  # type: ignore[union-attr]
        await conn.input_audio_buffer.append(audio=SPEECH)
        await conn.input_audio_buffer.commit()
        committed = await until(conn, "input_audio_buffer.committed")
        assert kinds(committed) == ["input_audio_buffer.committed"]
        await conn.response.create()
        answer = await until(conn, "response.done")
        assert "".join(e.delta for e in answer if isinstance(e, ga.ResponseTextDeltaEvent)) == "Hello world"
        done = answer[-1]
        assert isinstance(done, ga.ResponseDoneEvent) and done.response.status == "completed"
        assert done.response.usage.output_tokens == 2 and done.response.usage.input_tokens == 40  # type: ignore[union-attr]
        assert done.response.output[0].content[0].text == "Hello world"  # type: ignore[union-attr]
    settings = voices.sessions[0].settings
    assert (settings.auto_respond, settings.vad_silence_ms, settings.audio_field) == (False, None, "audio")
    assert settings.request.messages[0].text == "Be brief." and settings.request.model == "main"
    assert voices.sessions[0].closed


async def test_server_vad_ends_turns_answers_and_is_cut_off_by_speech(app: FastAPI, voices: Voices):
    voices.reply = tuple(f" w{i}" for i in range(200))
    async with serving(app) as base_url, client(base_url).realtime.connect(model="main") as conn:
        await conn.recv()
        await conn.input_audio_buffer.append(audio=SPEECH)
        await conn.input_audio_buffer.append(audio=SILENCE)
        turn = await until(conn, "response.output_text.delta")
        assert kinds(turn) == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
            "response.created", "response.output_item.added", "response.content_part.added",
            "response.output_text.delta",
        ]  # fmt: skip
        await conn.input_audio_buffer.append(audio=SPEECH)  # barge-in
        cut = await until(conn, "input_audio_buffer.speech_started")
        done = next(e for e in cut if isinstance(e, ga.ResponseDoneEvent))
        assert done.response.status == "cancelled" and done.response.status_details.reason == "turn_detected"  # type: ignore[union-attr]
    assert voices.sessions[0].settings.vad_silence_ms == 500 and voices.sessions[0].settings.auto_respond


async def test_refused_events_are_errors_and_the_connection_goes_on(app: FastAPI):
    async with serving(app) as base_url, client(base_url).realtime.connect(model="main") as conn:
        await conn.recv()
        await conn.send_raw("{not json")
        await conn.send_raw('{"type": "conversation.item.create", "event_id": "e1", "item": {}}')
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]}, event_id="e2")
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00" * (128 << 10)).decode(), event_id="e3")
        await conn.input_audio_buffer.commit(event_id="e4")
        errors = [await asyncio.wait_for(conn.recv(), TIMEOUT_S) for _ in range(5)]
        assert all(isinstance(e, ga.RealtimeErrorEvent) for e in errors)
        assert [(e.error.param, e.error.event_id) for e in errors] == [
            (None, None), ("type", "e1"), ("session.output_modalities", "e2"), ("audio", "e3"), (None, "e4"),
        ]  # fmt: skip
        assert errors[4].error.code == "input_audio_buffer_commit_empty"
        await conn.session.update(session={"type": "realtime", "instructions": "still here"})
        assert (await conn.recv()).type == "session.updated"


@pytest.mark.parametrize(
    ("key", "model", "kind", "param"),
    [("sk-wrong", "main", "authentication_error", None), (KEY, "nonexistent", "not_found_error", "model")],
)
async def test_a_refused_connection_is_told_why_and_closed(app: FastAPI, key: str, model: str, kind: str, param: str):
    async with serving(app) as base_url, client(base_url, key).realtime.connect(model=model) as conn:
        error = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert isinstance(error, ga.RealtimeErrorEvent) and (error.error.type, error.error.param) == (kind, param)
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_a_failed_session_fails_the_answer_and_closes(app: FastAPI, voices: Voices):
    voices.fail = Unavailable("the replica went away")
    async with serving(app) as base_url, client(base_url).realtime.connect(model="main") as conn:
        await conn.recv()
        await conn.input_audio_buffer.append(audio=SPEECH)
        await conn.input_audio_buffer.append(audio=SILENCE)
        events = await until(conn, "error")
        done = next(e for e in events if isinstance(e, ga.ResponseDoneEvent))
        assert done.response.status == "failed" and events[-1].error.code == "unavailable"
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_the_beta_client_gets_the_beta_dialect(app: FastAPI):
    async with serving(app) as base_url:
        beta_client = openai.AsyncOpenAI(
            base_url=base_url, api_key=KEY, websocket_base_url=base_url.replace("http", "ws")
        )
        conn = await beta_client.beta.realtime.connect(model="main").enter()  # it always takes wss:// otherwise
        try:
            created = await conn.recv()
            assert isinstance(created, beta.SessionCreatedEvent) and created.session.modalities == ["text"]
            await conn.session.update(session={"modalities": ["text"], "input_audio_format": "pcm16", "turn_detection": None})  # fmt: skip
            await conn.recv()
            await conn.input_audio_buffer.append(audio=SPEECH)
            await conn.response.create(response={"modalities": ["text"]})
            answer = await until(conn, "response.done")
            assert "".join(e.delta for e in answer if isinstance(e, beta.ResponseTextDeltaEvent)) == "Hello world"
            assert isinstance(answer[-1], beta.ResponseDoneEvent) and answer[-1].response.status == "completed"
        finally:
            await conn.close()


async def test_a_browser_authenticates_by_subprotocol(app: FastAPI):
    async with serving(app) as base_url:
        url = base_url.replace("http", "ws") + "/realtime?model=main"
        async with ws_connect(url, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "realtime"
            assert '"session.created"' in str(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
