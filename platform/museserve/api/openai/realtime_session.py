"""The Realtime protocol over one voice session, without a socket: the route feeds it client
events (`handle`) and voice events (`on_voice_event`) and sends the server events they return.

The voice session opens with the settings so far at the first audio; from then on a
`session.update` may only repeat them. Turns map as OpenAI's do: with server VAD the
server ends a turn (`speech_started`, `speech_stopped`, `committed`) and answers unless
`create_response` is false; with `turn_detection: null`, `commit` ends a turn and
`response.create` starts its answer. An answer's response starts at its first event, so
`response.created` never precedes the `committed` of the speech it answers.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from typing import Any, Protocol

from museserve.api.openai import realtime_schemas as c
from museserve.api.openai.realtime_events import AnswerRecord, Dialect, Refusal, ServerEvents, finish_status, new_id
from museserve.api.openai.realtime_settings import (
    AUDIO_FIELD,
    DEFAULT_PARAMS,
    RealtimeSettings,
    apply_update,
    param_of,
    refuse_response_settings,
    session_json,
    voice_settings,
)
from museserve.config.voice import VoiceConfig
from museserve.domain import ChatRequest, Finish, TextDelta, Usage
from museserve.errors import MuseError
from museserve.voice.events import AnswerEvent, SpeechEnded, SpeechStarted, VoiceEvent, VoiceSettings


class VoiceSessionLike(Protocol):
    async def audio(self, pcm: bytes) -> None: ...
    async def end_of_speech(self) -> None: ...
    async def respond(self) -> None: ...
    async def cancel_answer(self) -> None: ...
    def events(self) -> AsyncIterator[VoiceEvent]: ...
    async def close(self) -> None: ...


VoiceOpener = Callable[[VoiceSettings], Awaitable[VoiceSessionLike]]


class RealtimeSession:
    def __init__(
        self,
        base: ChatRequest,
        model_names: tuple[str, str],
        dialect: Dialect,
        limits: VoiceConfig,
        open_voice: VoiceOpener,
    ):
        """`base`: the connection's model, mode and identity; `model_names`: the model as the
        URL asked for it and as served."""
        self.events = ServerEvents(dialect)
        self.settings = RealtimeSettings()
        self.voice: VoiceSessionLike | None = None
        self._base, self._model_names, self._limits, self._open_voice = base, model_names, limits, open_voice
        self._params = dict(DEFAULT_PARAMS[dialect])
        self._session_id = f"sess_{base.request_id}"  # as the voice session's logs name it
        self._max_audio_chars = 4 * math.ceil(limits.max_chunk_bytes / 3)  # its base64 length
        # Audio since the last commit, and where in the session's audio each chunk started (ms).
        self._uncommitted_bytes = 0
        self._audio_ms = self._chunk_start_ms = 0.0
        self._turn_items: dict[int, tuple[str, int]] = {}  # open turn -> (its item id, its start ms)
        self._last_item: str | None = None
        self._answer: AnswerRecord | None = None  # the answer streaming
        self._answer_expected = False  # asked for (or due) and not started yet
        self._unanswered_turn = False  # a turn's speech ended and awaits `response.create`
        self._client_cancelled = False
        self._reported: MuseError | None = None  # a voice session error already sent as the answer to an event

    def created(self) -> dict[str, Any]:
        return self.events.session("created", self._session())

    async def handle(self, event: c.ClientEvent) -> list[dict[str, Any]]:
        """The events that answer `event` at once; a refused event is an `error` event."""
        try:
            if isinstance(event, c.SessionUpdate):
                return self._update(event.session)
            if isinstance(event, c.AudioAppend):
                await self._append(event.audio)
            elif isinstance(event, c.AudioCommit):
                await self._commit()
            elif isinstance(event, c.AudioClear):
                return self._clear()
            elif isinstance(event, c.ResponseCreate):
                await self._respond(event.response)
            else:
                await self._cancel(event.response_id)
        except MuseError as e:
            if not isinstance(e, Refusal):
                self._reported = e  # it ended the voice session: `on_failure` follows
            return [self.error_event(e, event.event_id)]
        return []

    def on_voice_event(self, event: VoiceEvent) -> list[dict[str, Any]]:
        if isinstance(event, SpeechStarted):
            # A new turn: an unanswered one stays in the conversation, an answer due is gone.
            self._unanswered_turn = self._answer_expected = False
            item = new_id("item")
            self._turn_items[event.turn] = (item, round(self._chunk_start_ms))
            detecting = self.settings.turn_detection is not None
            return [self.events.speech_started(item, round(self._chunk_start_ms))] if detecting else []
        if isinstance(event, SpeechEnded):
            return self._speech_ended(event)
        return self._answer_event(event)

    def on_failure(self, error: MuseError) -> list[dict[str, Any]]:
        """The session failed: the answer streaming (if any) fails with it."""
        out: list[dict[str, Any]] = []
        if self._answer is not None:
            body = self.error_event(error)["error"]
            reason = {"type": body["type"], "code": body["code"], "message": body["message"]}
            out += self.events.answer_finished(self._answer, "failed", None, reason)
            self._answer_done()
        return out if error is self._reported else [*out, self.error_event(error)]

    def error_event(self, error: MuseError, client_event_id: str | None = None) -> dict[str, Any]:
        if isinstance(error, Refusal):
            param = error.field or None
        else:
            param = param_of(error.field, self._params) if error.field else None
        return self.events.error(error, param, client_event_id)

    async def close(self) -> None:
        if self.voice is not None:
            await self.voice.close()

    def _session(self) -> dict[str, Any]:
        return session_json(self.settings, self.events.dialect, self._session_id, self._model_names[1])

    def _update(self, update: c.SessionFields) -> list[dict[str, Any]]:
        settings, params = apply_update(self.settings, update, self._model_names, self._limits)
        if self.voice is not None:
            changed = [
                f.name for f in fields(RealtimeSettings) if getattr(settings, f.name) != getattr(self.settings, f.name)
            ]
            if changed:
                message = "cannot change once audio was sent: reconnect to change it"
                raise Refusal(message, param={**self._params, **params}[changed[0]])
        self.settings = settings
        self._params.update(params)
        return [self.events.session("updated", self._session())]

    async def _opened(self) -> VoiceSessionLike:
        if self.voice is None:
            self.voice = await self._open_voice(voice_settings(self.settings, self._base))
        return self.voice

    async def _append(self, audio: str) -> None:
        if len(audio) > self._max_audio_chars:
            raise Refusal(f"holds more than {self._limits.max_chunk_bytes} bytes of audio", param=AUDIO_FIELD)
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal("is not valid base64", param=AUDIO_FIELD) from None
        if len(pcm) > self._limits.max_chunk_bytes:
            raise Refusal(f"holds more than {self._limits.max_chunk_bytes} bytes of audio", param=AUDIO_FIELD)
        if len(pcm) % 2:
            raise Refusal("is not a whole number of 16-bit samples", param=AUDIO_FIELD)
        if not pcm:
            return
        voice = await self._opened()
        self._uncommitted_bytes += len(pcm)
        self._chunk_start_ms = self._audio_ms
        self._audio_ms += len(pcm) / 2 / self.settings.sample_rate_hz * 1000
        await voice.audio(pcm)

    async def _commit(self) -> None:
        if self.voice is None or not self._uncommitted_bytes:
            raise Refusal("the input audio buffer is empty", param="", code="input_audio_buffer_commit_empty")
        self._uncommitted_bytes = 0
        await self.voice.end_of_speech()

    def _clear(self) -> list[dict[str, Any]]:
        if self._uncommitted_bytes:
            message = "speech is prefilled as it arrives and cannot be cleared: commit it, or reconnect"
            raise Refusal(message, param="", code="unsupported")
        return [self.events.cleared()]

    async def _respond(self, response: c.ResponseFields | None) -> None:
        if response is not None:
            refuse_response_settings(response)
        if self._answer is not None or self._answer_expected:
            message = "an answer is already in progress: wait for its response.done or cancel it"
            raise Refusal(message, param="", code="conversation_already_has_active_response")
        if self.voice is None or not (self._uncommitted_bytes or self._unanswered_turn):
            raise Refusal("no speech awaits an answer: append audio first", param="", code="input_audio_buffer_empty")
        self._answer_expected, self._unanswered_turn = True, False
        self._uncommitted_bytes = 0  # respond() commits it
        await self.voice.respond()

    async def _cancel(self, response_id: str | None) -> None:
        if self.voice is None or (self._answer is None and not self._answer_expected):
            raise Refusal("no answer is in progress", param="", code="response_cancel_not_active")
        if response_id and self._answer is not None and response_id != self._answer.response_id:
            raise Refusal("is not the answer in progress", param="response_id")
        self._client_cancelled = True
        await self.voice.cancel_answer()

    def _speech_ended(self, event: SpeechEnded) -> list[dict[str, Any]]:
        item, start_ms = self._turn_items.pop(event.turn, None) or (new_id("item"), round(self._chunk_start_ms))
        out = []
        if event.detected:
            self._uncommitted_bytes = 0
            out.append(self.events.speech_stopped(item, start_ms + round(event.audio_seconds * 1000)))
        out.append(self.events.committed(item, self._last_item))
        self._last_item = item
        vad = self.settings.turn_detection
        if vad is not None and vad.create_response:
            self._answer_expected = True
        else:
            self._unanswered_turn = not self._answer_expected  # else respond() ended it and answers it
        return out

    def _answer_event(self, event: AnswerEvent) -> list[dict[str, Any]]:
        out = []
        answer = self._answer
        if answer is None:
            answer = self._answer = AnswerRecord(self.settings.max_output_tokens)
            self._answer_expected = False
            out += self.events.answer_started(answer)
        update = event.event
        if isinstance(update, TextDelta) and update.text and update.index == 0:
            answer.text.append(update.text)
            out.append(self.events.text_delta(answer, update.text))
        elif isinstance(update, Usage):
            answer.usage = update
        elif isinstance(update, Finish):
            status, reason = finish_status(update.reason, self._client_cancelled)
            out += self.events.answer_finished(answer, status, reason)
            self._answer_done()
        return out  # reasoning, logprobs and progress events have no Realtime event

    def _answer_done(self) -> None:
        if self._answer is not None:
            self._last_item = self._answer.item_id
        self._answer, self._client_cancelled = None, False
