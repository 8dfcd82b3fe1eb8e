"""The Realtime wire translation without a socket: client events as the official client sends
them parse (GA and beta), session updates become settings and `VoiceSettings`, refusals name
the client's field, and every server event validates as the official client's type."""

from __future__ import annotations

import base64
import json
from typing import Any

import openai.types.beta.realtime as beta
import openai.types.realtime as ga
import pytest
from openai.types.realtime.realtime_audio_formats import AudioPCM
from openai.types.realtime.realtime_audio_input_turn_detection import ServerVad as GaServerVad

from museserve.api.openai import realtime_schemas as c
from museserve.api.openai.realtime_events import (
    AnswerRecord,
    Dialect,
    Refusal,
    ServerEvents,
    close_code,
    finish_status,
)
from museserve.api.openai.realtime_schemas import parse_client_event
from museserve.api.openai.realtime_settings import (
    DEFAULT_PARAMS,
    RealtimeSettings,
    ServerVad,
    apply_update,
    param_of,
    session_json,
    voice_settings,
)
from museserve.config.voice import VoiceConfig
from museserve.domain import ChatRequest, FinishReason, Role, Usage
from museserve.errors import InvalidArgument, ResourceExhausted, Unauthenticated, Unavailable
from tests.realtime_wire import official

MODELS = ("muse-tiny", "muse-tiny")
PCM = base64.b64encode(b"\x00\x01" * 240).decode()

GA_EVENTS = [
    ga.SessionUpdateEvent(
        type="session.update",
        session=ga.RealtimeSessionCreateRequest(
            type="realtime",
            output_modalities=["text"],
            instructions="Be brief.",
            max_output_tokens=64,
            audio=ga.RealtimeAudioConfig(
                input=ga.RealtimeAudioConfigInput(
                    format=AudioPCM(type="audio/pcm", rate=24000),
                    turn_detection=GaServerVad(type="server_vad", silence_duration_ms=300, threshold=0.5),
                )
            ),
        ),
    ),
    ga.InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio=PCM, event_id="e1"),
    ga.InputAudioBufferCommitEvent(type="input_audio_buffer.commit"),
    ga.InputAudioBufferClearEvent(type="input_audio_buffer.clear"),
    ga.ResponseCreateEvent(type="response.create"),
    ga.ResponseCreateEvent(
        type="response.create", response=ga.RealtimeResponseCreateParams(output_modalities=["text"])
    ),
    ga.ResponseCancelEvent(type="response.cancel", response_id="resp_1"),
]
BETA_EVENTS = [
    beta.SessionUpdateEvent(
        type="session.update",
        session=beta.session_update_event.Session(
            modalities=["text"],
            instructions="Be brief.",
            input_audio_format="pcm16",
            turn_detection=beta.session_update_event.SessionTurnDetection(type="server_vad", silence_duration_ms=300),
            temperature=0.7,
            max_response_output_tokens="inf",
        ),
    ),
    beta.InputAudioBufferAppendEvent(type="input_audio_buffer.append", audio=PCM),
    beta.InputAudioBufferCommitEvent(type="input_audio_buffer.commit"),
    beta.ResponseCreateEvent(type="response.create", response=beta.response_create_event.Response(modalities=["text"])),
    beta.ResponseCancelEvent(type="response.cancel"),
]


@pytest.mark.parametrize("sent", GA_EVENTS + BETA_EVENTS, ids=lambda e: f"{type(e).__module__.split('.')[2]}:{e.type}")
def test_every_client_event_parses_as_the_official_client_sends_it(sent: Any):
    parsed = parse_client_event(sent.to_json(use_api_names=True, exclude_unset=True))
    assert parsed.type == sent.type and parsed.event_id == sent.event_id


def updated(session: dict[str, Any], current: RealtimeSettings | None = None) -> tuple[RealtimeSettings, dict]:
    event = parse_client_event(json.dumps({"type": "session.update", "session": session}))
    assert isinstance(event, c.SessionUpdate)
    return apply_update(current or RealtimeSettings(), event.session, MODELS, VoiceConfig())


def test_the_defaults_are_openais_with_text_answers():
    settings = RealtimeSettings()
    assert (settings.sample_rate_hz, settings.turn_detection) == (24000, ServerVad(500, True))
    voice = voice_settings(settings, ChatRequest("r1", (), model="muse-tiny"))
    assert voice.vad_silence_ms == 500 and voice.auto_respond and voice.audio_field == "audio"
    assert voice.request.messages == () and voice.sample_rate_hz == 24000


def test_a_ga_update_sets_instructions_format_turns_and_budget():
    session = {"type": "realtime", "instructions": "Be brief.", "max_output_tokens": 64,
               "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                   "turn_detection": {"type": "server_vad", "silence_duration_ms": 300,
                                                      "create_response": False}}}}  # fmt: skip
    settings, params = updated(session)
    assert settings == RealtimeSettings("Be brief.", 16000, ServerVad(300, False), 64, None)
    assert params["sample_rate_hz"] == "session.audio.input.format.rate"
    voice = voice_settings(settings, ChatRequest("r1", (), model="muse-tiny"))
    assert voice.request.messages[0].role is Role.SYSTEM and voice.request.messages[0].text == "Be brief."
    assert voice.request.sampling.max_output_tokens == 64
    assert (voice.sample_rate_hz, voice.vad_silence_ms, voice.auto_respond) == (16000, 300, False)


def test_null_turn_detection_leaves_turns_to_the_client():
    settings, _ = updated({"audio": {"input": {"turn_detection": None}}})
    voice = voice_settings(settings, ChatRequest("r1", ()))
    assert settings.turn_detection is None and voice.vad_silence_ms is None and not voice.auto_respond
    assert updated({"instructions": "x"}, settings)[0].turn_detection is None, "absent fields keep their value"


def test_a_beta_update_uses_beta_names():
    session = {"modalities": ["text"], "input_audio_format": "pcm16", "turn_detection": None,
               "temperature": 0.6, "max_response_output_tokens": "inf"}  # fmt: skip
    settings, params = updated(session, RealtimeSettings(max_output_tokens=10))
    assert settings == RealtimeSettings("", 24000, None, None, 0.6)
    assert params["max_output_tokens"] == "session.max_response_output_tokens"
    assert voice_settings(settings, ChatRequest("r1", ())).request.sampling.temperature == 0.6


def refusal_of(session: dict[str, Any]) -> Refusal:
    with pytest.raises(Refusal) as refused:
        event = parse_client_event(json.dumps({"type": "session.update", "session": session}))
        assert isinstance(event, c.SessionUpdate)
        apply_update(RealtimeSettings(), event.session, MODELS, VoiceConfig())
    return refused.value


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"output_modalities": ["audio"]}, "session.output_modalities"),
        ({"modalities": ["text", "audio"]}, "session.modalities"),
        ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.audio.input.format.type"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 96000}}}}, "session.audio.input.format.rate"),
        ({"input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
        ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}, "session.audio.input.turn_detection.type"),
        ({"turn_detection": {"type": "server_vad", "interrupt_response": False}},
         "session.turn_detection.interrupt_response"),
        ({"tools": [{"type": "function", "name": "f"}]}, "session.tools"),
        ({"audio": {"input": {"transcription": {"model": "whisper-1"}}}}, "session.audio.input.transcription"),
        ({"model": "gpt-realtime"}, "session.model"),
        ({"type": "transcription"}, "session.type"),
        ({"voice_id": "x"}, "session.voice_id"),
        ({"max_output_tokens": 0}, "session.max_output_tokens"),
        ({"temperature": 3}, "session.temperature"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(session: dict[str, Any], param: str):
    refusal = refusal_of(session)
    assert refusal.field == param
    error = ServerEvents(Dialect.GA).error(refusal, refusal.field, "e9")
    assert official(error).error.param == param and error["error"]["event_id"] == "e9"  # type: ignore[attr-defined]


def test_messages_that_are_no_event_are_refused_with_their_event_id():
    with pytest.raises(Refusal) as bad_json:
        parse_client_event("{not json")
    assert bad_json.value.wire_code == "invalid_json" and not bad_json.value.field
    with pytest.raises(Refusal) as unknown:
        parse_client_event('{"type": "conversation.item.create", "event_id": "e7", "item": {}}')
    assert (unknown.value.field, unknown.value.event_id) == ("type", "e7")
    with pytest.raises(Refusal) as missing:
        parse_client_event('{"type": "input_audio_buffer.append", "event_id": "e8"}')
    assert (missing.value.field, missing.value.event_id) == ("audio", "e8")


def test_voice_session_fields_become_the_clients_params():
    ga_params, beta_params = DEFAULT_PARAMS[Dialect.GA], DEFAULT_PARAMS[Dialect.BETA]
    assert param_of("audio_format.sample_rate_hz", ga_params) == "session.audio.input.format.rate"
    assert param_of("audio_format.sample_rate_hz", beta_params) == "session.input_audio_format"
    assert param_of("server_vad_silence_ms", ga_params) == "session.audio.input.turn_detection.silence_duration_ms"
    assert param_of("messages[0].content[0].text", ga_params) == "session.instructions"
    assert param_of("sampling.max_output_tokens", beta_params) == "session.max_response_output_tokens"
    assert param_of("mode.mode", ga_params) == param_of("adapter", ga_params) == "model"
    assert param_of("audio", ga_params) == "audio"
    assert param_of("metadata.authorization", ga_params) is None and param_of("end_of_speech", ga_params) is None


@pytest.mark.parametrize("dialect", list(Dialect))
def test_every_server_event_is_the_official_clients(dialect: Dialect):
    events = ServerEvents(dialect)
    settings = RealtimeSettings(instructions="Be brief.", max_output_tokens=32)
    sessions = [events.session(kind, session_json(settings, dialect, "sess_1", "muse-tiny")) for kind in ("created", "updated")]  # fmt: skip
    speech = [events.speech_started("item_1", 0), events.speech_stopped("item_1", 900),
              events.committed("item_1", None), events.cleared()]  # fmt: skip
    errors = [
        events.error(Refusal("bad", param="audio"), "audio", "e1"),
        events.error(Unauthenticated("no key"), None, None),
    ]
    answers = []
    for status, reason in [("completed", None), ("incomplete", "max_output_tokens"), ("cancelled", "turn_detected")]:
        answer = AnswerRecord(32, usage=Usage(40, 8, 2, 5))
        answer.text.append("Hello")
        answers += [*events.answer_started(answer), events.text_delta(answer, "Hello")]
        answers += events.answer_finished(answer, status, reason)
    failed = events.answer_finished(AnswerRecord(None), "failed", None, {"type": "server_error", "code": "internal", "message": "x"})  # fmt: skip
    for event in sessions + speech + errors + answers + failed:
        official(event, dialect)
    done = official(answers[-1], dialect).response  # type: ignore[attr-defined]
    assert done.status == "cancelled" and done.status_details.reason == "turn_detected"
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (40, 7, 47)
    assert done.output[0].content[0].text == "Hello"


def test_finishes_map_to_response_statuses():
    assert finish_status(FinishReason.STOP, False) == ("completed", None)
    assert finish_status(FinishReason.LENGTH, False) == ("incomplete", "max_output_tokens")
    assert finish_status(FinishReason.CANCELLED, False) == ("cancelled", "turn_detected")
    assert finish_status(FinishReason.CANCELLED, True) == ("cancelled", "client_cancelled")


def test_close_codes():
    assert close_code(Unavailable("draining")) == close_code(ResourceExhausted("quota")) == 1013
    assert close_code(InvalidArgument("bad")) == close_code(Unauthenticated("no key")) == 1008
