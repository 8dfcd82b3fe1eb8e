"""`GET /v1/realtime?model=...`: the OpenAI Realtime API over a WebSocket, text answers only.

The connection is accepted, then the caller identified as over HTTP (`Authorization: Bearer`,
or a browser's `openai-insecure-api-key.<key>` subprotocol) and the model resolved; a refusal
there is an `error` event and the connection closes. `OpenAI-Beta: realtime=v1` (or the
`openai-beta.realtime-v1` subprotocol) selects the beta dialect. A bad message is an `error`
event and the connection goes on; a message over `server.max_request_bytes` is refused
unparsed. Until the voice session opens the connection waits at most `voice.idle_timeout_s`
for each message (then the session's own bounds apply), and it lasts at most
`voice.max_session_seconds`. When the voice session ends or fails the client gets its `error`
event and the connection closes with `realtime_events.close_code`.

A reader task takes client events, a pump task the voice session's events; both only queue
server events, which one writer sends in order (`Outbox`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from museserve.api.openai.convert import served_model
from museserve.api.openai.http_common import as_muse_error, credentials_of, request_id_of
from museserve.api.openai.model_names import parse_model_name
from museserve.api.openai.realtime_events import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    Dialect,
    Refusal,
    ServerEvents,
    close_code,
)
from museserve.api.openai.realtime_schemas import parse_client_event
from museserve.api.openai.realtime_session import RealtimeSession, VoiceSessionLike
from museserve.api.openai.realtime_settings import DEFAULT_PARAMS, param_of
from museserve.domain import ChatRequest, ModeParams, ToolChoice, ToolChoiceKind
from museserve.errors import DeadlineExceeded, FailedPrecondition, MuseError
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import Credentials
from museserve.voice.entry import open_voice as open_voice_session
from museserve.voice.events import VoiceSettings

SUBPROTOCOL = "realtime"
CLOSE_FLUSH_S = 5.0
_KEY_SUBPROTOCOL, _BETA_SUBPROTOCOL = "openai-insecure-api-key.", "openai-beta.realtime-v1"


class Outbox:
    """Server events, in order, sent by one writer task. `put` never waits, so neither the
    reader nor the voice pump ever blocks on a slow client (an answer's events are bounded
    by its output tokens). Once the client has gone, events are dropped."""

    def __init__(self, websocket: WebSocket):
        self._websocket = websocket
        self._queue: asyncio.Queue[dict[str, Any] | int] = asyncio.Queue()  # an int: the close code
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def put(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self._queue.put_nowait(event)

    async def close(self, code: int) -> None:
        """Sends what is queued (for at most CLOSE_FLUSH_S), then closes with `code`."""
        self._queue.put_nowait(code)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_FLUSH_S)
        except TimeoutError:
            self._writer.cancel()

    async def _write(self) -> None:
        try:
            while not isinstance(item := await self._queue.get(), int):
                await self._websocket.send_text(json.dumps(item))
            await self._websocket.close(item)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client has gone


# Opens a voice session for a caller (`voice.entry.open_voice`; tests script one).
OpenVoice = Callable[[Gateway, VoiceSettings], Awaitable[VoiceSessionLike]]


class RealtimeApi:
    def __init__(self, gateway: Gateway, open_voice: OpenVoice = open_voice_session):
        self.gateway = gateway
        self._open_voice = open_voice

    async def connect(self, websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        outbox = Outbox(websocket)
        beta = "realtime=v1" in websocket.headers.get("openai-beta", "") or _BETA_SUBPROTOCOL in offered
        dialect = Dialect.BETA if beta else Dialect.GA
        request_id = request_id_of(websocket)
        asked = websocket.query_params.get("model", "")
        try:
            base, served = await self._start(websocket, asked, request_id)
        except Exception as e:
            error = as_muse_error(e, request_id)
            param = param_of(error.field, DEFAULT_PARAMS[dialect]) if error.field else None
            outbox.put([ServerEvents(dialect).error(error, param, None)])
            await outbox.close(close_code(error))
            return
        connection = _Connection(self.gateway, self._open_voice, websocket, outbox, request_id)
        limits = self.gateway.config.gateway.voice
        session = RealtimeSession(base, (asked, served), dialect, limits, connection.open_voice)
        code = CLOSE_GOING_AWAY  # unless the connection ends by itself
        try:
            code = await connection.run(session)
        finally:
            await outbox.close(code)

    async def _start(self, websocket: WebSocket, model: str, request_id: str) -> tuple[ChatRequest, str]:
        """The connection's request (model, mode, identity) and the model that serves it."""
        if not self.gateway.config.gateway.voice.enabled:
            raise FailedPrecondition("voice sessions are not enabled on this service (gateway.voice.enabled)")
        identity = await self.gateway.identify(_credentials(websocket))
        name = parse_model_name(model)
        served = served_model(name.base, {info.name: info for info, _ in self.gateway.list_models()})
        request = ChatRequest(
            request_id=request_id,
            messages=(),
            model=served.name if name.base else "",  # empty: the gateway routes by mode
            adapter=name.adapter,
            mode=ModeParams(name.mode) if name.mode is not None else ModeParams(),
            identity=identity,
            tool_choice=ToolChoice(ToolChoiceKind.NONE),
        )
        return request, served.name


class _Connection:
    """One client's connection: its reader, the voice session's pump, and the close code."""

    def __init__(self, gateway: Gateway, opener: OpenVoice, websocket: WebSocket, outbox: Outbox, request_id: str):
        self._gateway, self._opener, self._websocket, self._outbox = gateway, opener, websocket, outbox
        self._request_id = request_id
        self._ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pump: asyncio.Task[None] | None = None
        self._session: RealtimeSession | None = None

    async def open_voice(self, settings: VoiceSettings) -> VoiceSessionLike:
        voice = await self._opener(self._gateway, settings)
        self._pump = asyncio.create_task(self._pump_events(voice))
        return voice

    async def run(self, session: RealtimeSession) -> int:
        """Serves the connection until the client leaves or the session ends; the close code."""
        self._session = session
        self._outbox.put([session.created()])
        reader = asyncio.create_task(self._read(session))
        try:
            await asyncio.wait([reader, self._ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            tasks = [task for task in (reader, self._pump) if task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()
        if not self._ended.done() and not reader.cancelled() and (fault := reader.exception()) is not None:
            self._end(as_muse_error(fault, self._request_id))
        return self._ended.result() if self._ended.done() else CLOSE_NORMAL

    async def _read(self, session: RealtimeSession) -> None:
        """Client events until the client leaves or the connection outlives its bounds."""
        loop = asyncio.get_running_loop()
        limits, max_bytes = self._gateway.config.gateway.voice, self._gateway.config.server.max_request_bytes
        deadline = loop.time() + limits.max_session_seconds
        while True:
            wait_s = deadline - loop.time()
            if session.voice is None:
                wait_s = min(wait_s, limits.idle_timeout_s)
            try:
                message = await asyncio.wait_for(self._websocket.receive(), max(wait_s, 0.0))
            except TimeoutError:
                self._end(DeadlineExceeded("the session sent no audio within voice.idle_timeout_s, or reached "
                                           "voice.max_session_seconds"))  # fmt: skip
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes") or b""
            try:
                if len(data) > max_bytes:
                    raise Refusal(f"the message is larger than {max_bytes} bytes", code="message_too_large")
                event = parse_client_event(data)
            except Refusal as refusal:
                self._outbox.put([session.error_event(refusal)])
                continue
            # Voice events queued by the last call are taken in before this event: queueing
            # scheduled the pump's wake-up ahead of this task's, and the pump takes every queued
            # event without waiting (`Outbox.put` never waits), so the session's state is current.
            await asyncio.sleep(0)
            self._outbox.put(await session.handle(event))

    async def _pump_events(self, voice: VoiceSessionLike) -> None:
        """The voice session's events to the client; when the session ends, so does the connection."""
        assert self._session is not None
        code = CLOSE_NORMAL
        try:
            async for event in voice.events():
                self._outbox.put(self._session.on_voice_event(event))
        except Exception as e:
            error = as_muse_error(e, self._request_id)
            self._outbox.put(self._session.on_failure(error))
            code = close_code(error)
        if not self._ended.done():
            self._ended.set_result(code)

    def _end(self, error: MuseError) -> None:
        assert self._session is not None
        self._outbox.put([self._session.error_event(error)])
        if not self._ended.done():
            self._ended.set_result(close_code(error))


def _credentials(websocket: WebSocket) -> Credentials:
    """As over HTTP; a browser, which cannot set headers, offers its key as a subprotocol."""
    credentials = credentials_of(websocket, None)
    if credentials.api_key:
        return credentials
    for offered in websocket.scope.get("subprotocols") or []:
        if offered.startswith(_KEY_SUBPROTOCOL):
            return Credentials(api_key=offered[len(_KEY_SUBPROTOCOL) :], user=credentials.user)
    return credentials
