"""For Realtime WebSocket tests: a FastAPI app served by uvicorn on a loopback port inside the
test's event loop, and a scripted voice session with the real one's turn semantics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import uvicorn
from fastapi import FastAPI

from museserve.domain import Finish, FinishReason, TextDelta, Usage
from museserve.errors import MuseError
from museserve.voice.events import AnswerEvent, SpeechEnded, SpeechStarted, VoiceEvent, VoiceSettings
from tests.support import free_port

_END = object()


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """`app` on a free loopback port; yields its `http://.../v1` base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task


class ScriptedVoiceSession:
    """A turn opens at its first chunk (cutting an answer that streams); with server VAD a
    chunk of pure silence ends it. Each answer streams `reply`; the session fails with
    `fail_with` once the answer has streamed `fail_after` pieces."""

    def __init__(self, settings: VoiceSettings, reply: Sequence[str] = ("Hello", " world")):
        self.settings = settings
        self.reply = tuple(reply)
        self.fail_with: MuseError | None = None
        self.fail_after = 0
        self.closed = False
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._turn = -1
        self._speaking = False
        self._answer: asyncio.Task[None] | None = None

    async def audio(self, pcm: bytes) -> None:
        if not self._speaking:
            await self.cancel_answer()
            self._turn += 1
            self._speaking = True
            self._queue.put_nowait(SpeechStarted(self._turn))
        if self.settings.vad_silence_ms is not None and not any(pcm):
            self._end_speech(detected=True, respond=self.settings.auto_respond)

    async def end_of_speech(self) -> None:
        self._end_speech(detected=False, respond=self.settings.auto_respond)

    async def respond(self) -> None:
        if self._speaking:
            self._end_speech(detected=False, respond=False)
        self._answer = asyncio.create_task(self._stream(self._turn))

    async def cancel_answer(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
            await asyncio.gather(self._answer, return_exceptions=True)
        self._answer = None

    async def events(self) -> AsyncIterator[VoiceEvent]:
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, MuseError):
                raise item
            yield item  # type: ignore[misc]

    async def close(self) -> None:
        self.closed = True
        await self.cancel_answer()
        self._queue.put_nowait(_END)

    def _end_speech(self, *, detected: bool, respond: bool) -> None:
        self._speaking = False
        self._queue.put_nowait(SpeechEnded(self._turn, 0.5, 13, detected))
        if respond:
            self._answer = asyncio.create_task(self._stream(self._turn))

    async def _stream(self, turn: int) -> None:
        sent = 0
        try:
            for piece in self.reply:
                if self.fail_with is not None and sent == self.fail_after:
                    self._queue.put_nowait(self.fail_with)
                    return
                await asyncio.sleep(0.01)
                self._queue.put_nowait(AnswerEvent(turn, TextDelta(piece)))
                sent += 1
            self._queue.put_nowait(AnswerEvent(turn, Usage(40, 0, 0, sent)))
            self._queue.put_nowait(AnswerEvent(turn, Finish(FinishReason.STOP, "main")))
        except asyncio.CancelledError:
            self._queue.put_nowait(AnswerEvent(turn, Usage(40, 0, 0, sent)))
            self._queue.put_nowait(AnswerEvent(turn, Finish(FinishReason.CANCELLED, "main")))
            raise
