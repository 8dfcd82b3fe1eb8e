"""The Realtime protocol over a scripted voice session, without a socket: client events become
the session's calls, its voice events become the official client's server events, turns and
answers in both turn modes, barge-in and cancellation, and what is refused without ending the
session (every event checked against the official types)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from museserve.api.openai.realtime_events import Dialect
from museserve.api.openai.realtime_schemas import parse_client_event
from museserve.api.openai.realtime_session import RealtimeSession
from museserve.config.voice import VoiceConfig
from museserve.domain import ChatRequest, Finish, FinishReason, ReasoningDelta, TextDelta, Usage
from museserve.errors import InvalidArgument, MuseError, Unavailable
from museserve.voice.events import AnswerEvent, SpeechEnded, SpeechStarted, VoiceEvent, VoiceSettings
from tests.realtime_wire import official, parsed_by_client

CHUNK = b"\x10\x00" * 2400  # 100 ms at 24 kHz


class ScriptedVoice:
    """Records the calls the protocol makes; its events are fed to the session by the test."""

    def __init__(self, error: MuseError | None = None) -> None:
        self.calls: list[str] = []
        self.error = error

    async def audio(self, pcm: bytes) -> None:
        self._call(f"audio:{len(pcm)}")

    async def end_of_speech(self) -> None:
        self._call("end_of_speech")

    async def respond(self) -> None:
        self._call("respond")

    async def cancel_answer(self) -> None:
        self._call("cancel_answer")

    async def events(self) -> AsyncIterator[VoiceEvent]:
        return
        yield

    async def close(self) -> None:
        self.calls.append("close")

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.error is not None:
            raise self.error


class Harness:
    def __init__(self, dialect: Dialect = Dialect.GA, open_error: MuseError | None = None):
        self.voice = ScriptedVoice()
        self.opened: list[VoiceSettings] = []
        self.open_error = open_error
        self.dialect = dialect
        base = ChatRequest("r1", (), model="muse-tiny")
        self.session = RealtimeSession(base, ("muse-tiny", "muse-tiny"), dialect, VoiceConfig(), self._open)

    async def _open(self, settings: VoiceSettings) -> ScriptedVoice:
        if self.open_error is not None:
            raise self.open_error
        self.opened.append(settings)
        return self.voice

    async def send(self, **event: Any) -> list[dict[str, Any]]:
        out = await self.session.handle(parse_client_event(json.dumps(event)))
        return [self.check(e) for e in out]

    async def set_rate(self, rate: int) -> list[dict[str, Any]]:
        """Rates other than 24 kHz are museserve's: the client parses them, its type says 24000."""
        update = {
            "type": "session.update",
            "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}},
        }
        return await self.session.handle(parse_client_event(json.dumps(update)))

    async def append(self, pcm: bytes = CHUNK) -> list[dict[str, Any]]:
        return await self.send(type="input_audio_buffer.append", audio=base64.b64encode(pcm).decode())

    def hear(self, *events: VoiceEvent) -> list[dict[str, Any]]:
        return [self.check(e) for event in events for e in self.session.on_voice_event(event)]

    def check(self, event: dict[str, Any]) -> dict[str, Any]:
        official(event, self.dialect)
        return event


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def answer(turn: int, *texts: str, reason: FinishReason = FinishReason.STOP) -> list[VoiceEvent]:
    deltas = [AnswerEvent(turn, TextDelta(t)) for t in texts]
    return [*deltas, AnswerEvent(turn, Usage(30, 0, 0, len(texts))), AnswerEvent(turn, Finish(reason, "muse-tiny"))]


async def test_without_turn_detection_commit_ends_speech_and_response_create_answers():
    h = Harness()
    updated = await h.send(type="session.update", session={"instructions": "Be brief.", "audio": {"input": {"turn_detection": None}}})  # fmt: skip
    assert kinds(updated) == ["session.updated"] and updated[0]["session"]["audio"]["input"]["turn_detection"] is None
    assert await h.append() == [] and h.voice.calls == [f"audio:{len(CHUNK)}"]
    settings = h.opened[0]
    assert (settings.auto_respond, settings.vad_silence_ms, settings.sample_rate_hz) == (False, None, 24000)
    assert settings.request.messages[0].text == "Be brief."
    assert h.hear(SpeechStarted(0)) == [], "no speech_started without server VAD"
    assert await h.send(type="input_audio_buffer.commit") == [] and h.voice.calls[-1] == "end_of_speech"
    committed = h.hear(SpeechEnded(0, 0.1, 3, detected=False))
    assert kinds(committed) == ["input_audio_buffer.committed"] and committed[0]["previous_item_id"] is None
    assert await h.send(type="response.create") == [] and h.voice.calls[-1] == "respond"
    streamed = h.hear(AnswerEvent(0, ReasoningDelta("hm")), *answer(0, "Hel", "lo"))
    assert kinds(streamed) == [
        "response.created", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.done",
    ]  # fmt: skip
    done = streamed[-1]["response"]
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "Hello"
    assert done["usage"]["output_tokens"] == 2 and streamed[-2]["item"]["status"] == "completed"
    h.hear(SpeechStarted(1))
    assert h.hear(SpeechEnded(1, 0.2, 5, detected=False))[0]["previous_item_id"] == done["output"][0]["id"]


async def test_server_vad_reports_speech_and_answers_by_itself():
    h = Harness()
    await h.append()
    started = h.hear(SpeechStarted(0))
    assert kinds(started) == ["input_audio_buffer.speech_started"] and started[0]["audio_start_ms"] == 0
    await h.append()
    ended = h.hear(SpeechEnded(0, 0.2, 5, detected=True))
    assert kinds(ended) == ["input_audio_buffer.speech_stopped", "input_audio_buffer.committed"]
    assert ended[0]["audio_end_ms"] == 200 and ended[0]["item_id"] == started[0]["item_id"] == ended[1]["item_id"]
    busy = await h.send(type="response.create", event_id="e5")
    assert busy[0]["error"]["code"] == "conversation_already_has_active_response"
    assert busy[0]["error"]["event_id"] == "e5" and "respond" not in h.voice.calls
    assert kinds(h.hear(*answer(0, "Hi"))[-1:]) == ["response.done"]


async def test_speech_over_an_answer_cuts_it_off_and_a_cancel_is_the_clients():
    h = Harness()
    await h.append()
    h.hear(SpeechStarted(0), SpeechEnded(0, 0.1, 3, detected=True), AnswerEvent(0, TextDelta("Hel")))
    await h.append()  # barge-in: the voice session cuts the answer
    cut = h.hear(AnswerEvent(0, Usage(30, 0, 0, 1)), AnswerEvent(0, Finish(FinishReason.CANCELLED, "muse-tiny")))
    assert cut[-1]["response"]["status"] == "cancelled"
    assert cut[-1]["response"]["status_details"]["reason"] == "turn_detected"
    assert cut[-1]["response"]["output"][0]["content"][0]["text"] == "Hel"
    h.hear(SpeechStarted(1), SpeechEnded(1, 0.1, 3, detected=True), AnswerEvent(1, TextDelta("So")))
    assert await h.send(type="response.cancel") == [] and h.voice.calls[-1] == "cancel_answer"
    cancelled = h.hear(*answer(1, reason=FinishReason.CANCELLED))
    assert cancelled[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    not_active = await h.send(type="response.cancel")
    assert not_active[0]["error"]["code"] == "response_cancel_not_active"


async def test_refusals_leave_the_session_as_it_was():
    h = Harness()
    empty = await h.send(type="input_audio_buffer.commit")
    assert empty[0]["error"]["code"] == "input_audio_buffer_commit_empty"
    nothing = await h.send(type="response.create")
    assert nothing[0]["error"]["code"] == "input_audio_buffer_empty" and h.opened == []
    too_large = await h.append(b"\x00" * (VoiceConfig().max_chunk_bytes + 2))
    odd = await h.append(b"\x00" * 3)
    not_base64 = await h.send(type="input_audio_buffer.append", audio="***")
    assert [e["error"]["param"] for e in too_large + odd + not_base64] == ["audio"] * 3 and h.opened == []
    audio_out = await h.send(type="response.create", response={"output_modalities": ["audio"]})
    override = await h.send(type="response.create", response={"instructions": "x", "conversation": "auto"})
    assert [e["error"]["param"] for e in audio_out + override] == [
        "response.output_modalities",
        "response.instructions",
    ]
    assert kinds(await h.send(type="input_audio_buffer.clear")) == ["input_audio_buffer.cleared"]
    await h.append()
    assert (await h.send(type="input_audio_buffer.clear"))[0]["error"]["code"] == "unsupported"


async def test_once_open_the_audio_format_is_fixed():
    h = Harness()
    await h.set_rate(16000)
    await h.append()
    assert h.opened[0].sample_rate_hz == 16000
    same = await h.set_rate(16000)
    assert kinds(same) == ["session.updated"]
    assert parsed_by_client(same[0]).session.audio.input.format.rate == 16000  # type: ignore[union-attr]
    changed = await h.send(type="session.update", event_id="e2", session={"audio": {"input": {"format": {"type": "audio/pcm"}}}})  # fmt: skip
    assert changed[0]["error"]["param"] == "session.audio.input.format.rate" and changed[0]["error"]["event_id"] == "e2"
    beta = await h.send(type="session.update", session={"instructions": "new"})
    assert beta[0]["error"]["param"] == "session.instructions" and h.session.settings.instructions == ""


async def test_a_refused_open_names_the_setting_and_a_later_append_retries():
    h = Harness(Dialect.BETA, open_error=InvalidArgument("outside 8000..48000 Hz", field="audio_format.sample_rate_hz"))
    refused = await h.append()
    assert refused[0]["error"]["param"] == "session.input_audio_format" and h.session.voice is None
    h.open_error = None
    assert await h.append() == [] and len(h.opened) == 1


@pytest.mark.parametrize("already_reported", [False, True])
async def test_a_failed_session_fails_the_answer_and_reports_the_error_once(already_reported: bool):
    h = Harness(Dialect.BETA)
    await h.append()
    h.hear(SpeechStarted(0), SpeechEnded(0, 0.1, 3, detected=True), AnswerEvent(0, TextDelta("Hel")))
    error = Unavailable("the replica went away")
    if already_reported:
        h.voice.error = error
        assert (await h.append())[0]["error"]["code"] == "unavailable"
    failed = [h.check(e) for e in h.session.on_failure(error)]
    expected = ["response.text.done", "response.content_part.done", "response.output_item.done", "response.done"]
    assert kinds(failed) == expected + ([] if already_reported else ["error"])
    assert failed[3]["response"]["status"] == "failed"
    assert failed[3]["response"]["status_details"]["error"]["type"] == "service_unavailable_error"
