"""A live voice session: turns of speech in, text answers out, over one gateway connection.

    audio -> (turn opens: live request admitted, its prefix prefilling) -> rows -> replica
    end of speech (client marker or detected silence) -> tail sent, prompt closed -> answer

Speech that arrives while an answer streams is barge-in: the answer is cut (the stream ends
with usage counting what was streamed, and Finish CANCELLED; nothing past the cut is charged)
and the next turn opens. Every turn's speech and the answer text the user got stay in the
session's history, speech as the very rows sent, so the next turn's prompt repeats the last
one's tokens and the replica's prefix cache serves them: the KV of a turn outlives it.

The edge (gRPC `Converse`, the Realtime WebSocket) calls `audio`, `end_of_speech`, `respond`,
`cancel_answer` from its reader and drains `events` from its writer; `close` ends it all.
A broken limit or a failed turn ends the session: `events` raises that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import numpy as np

from museserve.domain import AudioPart, Message, Role, TextPart
from museserve.errors import Cancelled, InvalidArgument, MuseError
from museserve.messages import MediaSegment
from museserve.preprocess.audio_stream import StreamingAudioFeatures, pcm16_to_float
from museserve.preprocess.speech_end import SpeechEndDetector
from museserve.voice.answer import TurnAnswer
from museserve.voice.events import SpeechEnded, SpeechStarted, VoiceEvent, VoiceSettings
from museserve.voice.limits import ChunkGate
from museserve.voice.onset import SpeechOnset
from museserve.voice.ports import VoicePorts
from museserve.voice.turn import LiveTurn, open_turn

logger = logging.getLogger(__name__)

_END = object()
SPEECH_PART = AudioPart(b"", "pcm16")  # where a turn's speech sits in the conversation


class VoiceSession:
    def __init__(self, settings: VoiceSettings, ports: VoicePorts):
        self.settings = settings
        self.ports = ports
        self.gate = ChunkGate(ports.config, settings.audio_field)
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._messages: list[Message] = list(settings.request.messages)
        self._speech: list[tuple[MediaSegment, ...]] = []  # per earlier turn, as sent
        self._turn: LiveTurn | None = None
        self._turns = 0
        self._features: StreamingAudioFeatures | None = None  # the open turn's
        self._detector: SpeechEndDetector | None = None  # the open turn's, with server end-of-speech detection
        self._answer: asyncio.Task | None = None
        self._error: MuseError | None = None
        self._closed = False
        self._onset = SpeechOnset(settings.sample_rate_hz, ports.config.vad_threshold_db)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    # -- the edge's calls ---------------------------------------------------------------

    async def audio(self, pcm: bytes) -> None:
        """Speech of the open turn. With no turn open, audio opens one; it waits for speech
        (`SpeechOnset`) where the server detects turns or an answer is streaming, so silence
        neither opens a turn nor cuts the answer off; speech over an answer is barge-in."""
        self._check_open()
        try:
            self.gate.check_chunk(pcm)
            self.gate.check_session()
            samples: np.ndarray | None = pcm16_to_float(pcm)
            if self._turn is None or self._turn.speech_ended:
                if self.settings.vad_silence_ms is not None or self._answering:
                    samples = self._onset.take(samples)
                    if samples is None:
                        return  # no speech yet
                await self._next_turn()
            await self._take(samples)
        except MuseError as e:
            await self._fail(e)
            raise

    async def _take(self, samples: np.ndarray) -> None:
        turn = self._turn
        turn.add(self._features.push(samples))
        turn.audio_seconds = self._features.seconds
        self.gate.check_turn(turn.audio_seconds)
        if self._detector is not None and self._detector.push(samples):
            await self._end_speech(detected=True)

    @property
    def _answering(self) -> bool:
        return self._answer is not None and not self._answer.done()

    async def end_of_speech(self) -> None:
        self._check_open()
        self.gate.touch()
        if self._turn is None or self._turn.speech_ended:
            error = InvalidArgument("no speech to end: send audio first", field="end_of_speech")
            await self._fail(error)
            raise error
        try:
            await self._end_speech(detected=False)
        except MuseError as e:
            await self._fail(e)
            raise

    async def respond(self) -> None:
        """Starts the answer of the turn whose speech ended (commits speech still open first)."""
        self._check_open()
        self.gate.touch()
        if self._turn is not None and not self._turn.speech_ended:
            await self._end_speech(detected=False, respond=False)
        turn = self._turn
        if turn is None or turn.prompt_closed or turn.ended:
            error = InvalidArgument("no ended speech awaits an answer", field="response")
            await self._fail(error)
            raise error
        await self._start_answer(turn)

    async def cancel_answer(self) -> None:
        self.gate.touch()
        await self._cut_answer()

    async def finish(self) -> None:
        """The client sends no more: speech still open is ended and answered, and the session
        closes once the answer in flight has finished."""
        if self._error is not None or self._closed:
            return
        if self._turn is not None and not self._turn.ended and not self._turn.prompt_closed:
            if not self._turn.speech_ended:
                await self._end_speech(detected=False, respond=True)
            elif self._answer is None:
                await self._start_answer(self._turn)
        if self._answer is not None:
            await asyncio.gather(self._answer, return_exceptions=True)
        await self.close()

    @property
    def failed(self) -> bool:
        return self._error is not None

    async def abort(self, error: MuseError) -> None:
        """Ends the session with `error` (the first error wins); `events` raises it."""
        await self._fail(error)

    async def events(self) -> AsyncIterator[VoiceEvent]:
        while True:
            item = await self._events.get()
            if item is _END:
                return
            if isinstance(item, MuseError):
                raise item
            yield item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watchdog.cancel()
        await self._cut_answer()
        if self._turn is not None:
            await self._end_turn(self._turn, "", "unanswered")
        self._events.put_nowait(_END)

    # -- turns ----------------------------------------------------------------------------

    async def _next_turn(self) -> None:
        await self._cut_answer()  # barge-in: the user speaks over the answer
        ports, settings = self.ports, self.settings
        if self._turn is not None and not self._turn.ended:
            await self._end_turn(self._turn, "", "unanswered")  # speech never answered stays as history
        request = settings.request
        messages = (*self._messages, Message(Role.USER, (SPEECH_PART,)))
        turn = await open_turn(self._turns, dataclasses.replace(request, messages=messages), self._speech, ports)
        self._turn = turn
        self._turns += 1
        self._features = StreamingAudioFeatures(settings.sample_rate_hz, ports.media)
        silence = settings.vad_silence_ms
        threshold = ports.config.vad_threshold_db
        self._detector = SpeechEndDetector(settings.sample_rate_hz, silence, threshold) if silence else None
        logger.info("voice session %s tenant=%s turn %d opened on pool %s", request.request_id,
                    request.identity.tenant, turn.index, turn.prompt.prepared.pool)  # fmt: skip
        self._events.put_nowait(SpeechStarted(turn.index))

    async def _end_speech(self, *, detected: bool, respond: bool | None = None) -> None:
        turn = self._turn
        assert turn is not None
        turn.add(self._features.finish())
        turn.speech_ended = True
        self._events.put_nowait(SpeechEnded(turn.index, self._features.seconds, turn.num_audio_tokens, detected))
        if self.settings.auto_respond if respond is None else respond:
            await self._start_answer(turn)

    async def _start_answer(self, turn: LiveTurn) -> None:
        await turn.close()
        self._answer = asyncio.get_running_loop().create_task(self._stream_answer(turn))

    async def _stream_answer(self, turn: LiveTurn) -> None:
        answer = TurnAnswer(turn, self._events.put_nowait)
        try:
            await answer.run()
        except MuseError as e:
            await self._fail(e)
        finally:
            self.ports.settle(answer.output_tokens)
            await self._end_turn(turn, answer.text, answer.end)

    async def _end_turn(self, turn: LiveTurn, answer_text: str, end: str) -> None:
        """The turn leaves the replica; its speech and the answer heard stay as history.
        `end`: answered, interrupted, unanswered or failed (`GatewayObserver.voice_turn`)."""
        if turn.ended:
            return
        await turn.abort()
        self.ports.observe_turn(end, turn.audio_seconds)
        if turn.num_sent_tokens:
            self._messages.append(Message(Role.USER, (SPEECH_PART,)))
            self._speech.append(tuple(turn.segments))
            if answer_text:
                self._messages.append(Message(Role.ASSISTANT, (TextPart(answer_text),)))
        if self._turn is turn:
            self._answer = None

    async def _cut_answer(self) -> None:
        task = self._answer
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._answer = None

    # -- failure ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise Cancelled("the voice session is closed")

    async def _fail(self, error: MuseError) -> None:
        if self._error is not None:
            return
        self._error = error
        logger.info("voice session %s tenant=%s ended: %s", self.settings.request.request_id,
                    self.settings.request.identity.tenant, error.code)  # fmt: skip
        self._events.put_nowait(error)
        with contextlib.suppress(Exception):
            await self._abort_all()

    async def _abort_all(self) -> None:
        if self._answer is not None and asyncio.current_task() is not self._answer:
            await self._cut_answer()
        if self._turn is not None and self._answer is None:
            await self._end_turn(self._turn, "", "failed")

    async def _watch(self) -> None:
        """The session's length and idle bounds, checked every half second."""
        while True:
            await asyncio.sleep(0.5)
            answering = self._answering
            try:
                self.gate.check_session()
                if not answering:
                    self.gate.check_idle()
            except MuseError as e:
                await self._fail(e)
                return
            if answering:
                self.gate.touch()  # an answer streaming is activity
