"""The client events of the Realtime WebSocket (`/v1/realtime`) that museserve serves.

Both of OpenAI's dialects parse: the GA one (`session.output_modalities`, `session.audio.input`)
and the beta one (`modalities`, `input_audio_format`, `turn_detection`, ...). As for chat
(`schemas`): fields that change nothing for a text answer are accepted and ignored, fields
museserve cannot honour are declared so the refusal names them (`realtime_settings`), and any
other field is refused by `extra="forbid"`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from museserve.api.openai.errors import validation_message
from museserve.api.openai.realtime_events import Refusal
from museserve.api.openai.schemas import INT32_MAX, Strict

Modality = Literal["text", "audio"]


def _token_budget(value: int | str) -> int | str:
    if isinstance(value, int) and not 1 <= value <= INT32_MAX:
        raise ValueError(f"must be from 1 to {INT32_MAX}, or 'inf'")
    return value


MaxTokens = Annotated[int | Literal["inf"], AfterValidator(_token_budget)]


class AudioFormat(Strict):
    type: str | None = Field(None, description="audio/pcm (16-bit little-endian mono); others are refused.")
    rate: int | None = Field(None, ge=1, le=INT32_MAX, description="Samples per second; default 24000.")


class TurnDetection(Strict):
    type: str = Field(description="server_vad; semantic_vad is refused.")
    silence_duration_ms: int | None = Field(None, ge=0, le=INT32_MAX)
    create_response: bool | None = None
    interrupt_response: bool | None = Field(None, description="Speech always cuts an answer off: false is refused.")
    threshold: float | None = Field(None, description="Accepted and ignored: voice.vad_threshold_db applies.")
    prefix_padding_ms: int | None = Field(None, description="Accepted and ignored: all of a turn's audio is kept.")
    idle_timeout_ms: int | None = Field(None, description="Not supported.")
    eagerness: str | None = Field(None, description="semantic_vad only.")


class AudioInput(Strict):
    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    transcription: dict[str, Any] | None = Field(None, description="Not supported.")


class AudioOutput(Strict):
    """Answers are text: the output audio settings are accepted and ignored."""

    format: dict[str, Any] | None = None
    voice: str | dict[str, Any] | None = None
    speed: float | None = None


class AudioConfig(Strict):
    input: AudioInput | None = None
    output: AudioOutput | None = None


class SessionFields(Strict):
    """`session.update`'s `session`: only the fields present change (a null clears)."""

    type: str | None = Field(None, description="realtime (GA; absent in beta); transcription is refused.")
    model: str | None = Field(None, description="The connection's own model (`?model=`), or left out.")
    instructions: str | None = None
    output_modalities: list[Modality] | None = None
    modalities: list[Modality] | None = Field(None, description="Beta's output_modalities.")
    audio: AudioConfig | None = None
    input_audio_format: str | None = Field(None, description="Beta: pcm16 (24 kHz) only.")
    turn_detection: TurnDetection | None = Field(None, description="Beta's audio.input.turn_detection.")
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = Field(None, description="Beta's max_output_tokens.")
    temperature: float | None = Field(None, ge=0, le=2)
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported: only an empty list.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Accepted and ignored (no tools).")
    output_audio_format: str | None = Field(None, description="Accepted and ignored.")
    voice: str | dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    speed: float | None = Field(None, description="Accepted and ignored.")
    input_audio_noise_reduction: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    input_audio_transcription: dict[str, Any] | None = Field(None, description="Not supported.")
    reasoning: dict[str, Any] | None = Field(None, description="Not supported: name the mode in the model.")
    prompt: dict[str, Any] | None = Field(None, description="Not supported.")
    tracing: str | dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    truncation: str | dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    include: list[str] | None = Field(None, description="Accepted and ignored.")
    parallel_tool_calls: bool | None = Field(None, description="Accepted and ignored.")
    # What a client echoes back from `session.created`.
    id: str | None = None
    object: str | None = None
    expires_at: int | None = None


class ResponseFields(Strict):
    """`response.create`'s `response`: a response takes the session's settings, so only a text
    output modality is accepted; anything else is declared to be refused by name."""

    output_modalities: list[Modality] | None = None
    modalities: list[Modality] | None = None
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    max_response_output_tokens: MaxTokens | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    conversation: str | None = None
    input: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    audio: dict[str, Any] | None = None
    voice: str | dict[str, Any] | None = None
    output_audio_format: str | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class SessionUpdate(Strict):
    type: Literal["session.update"]
    event_id: str | None = None
    session: SessionFields


class AudioAppend(Strict):
    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str = Field(description="Base64 PCM16 in the session's input format.")


class AudioCommit(Strict):
    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class AudioClear(Strict):
    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


class ResponseCreate(Strict):
    type: Literal["response.create"]
    event_id: str | None = None
    response: ResponseFields | None = None


class ResponseCancel(Strict):
    type: Literal["response.cancel"]
    event_id: str | None = None
    response_id: str | None = None


ClientEvent = SessionUpdate | AudioAppend | AudioCommit | AudioClear | ResponseCreate | ResponseCancel
_EVENTS: dict[str, TypeAdapter[Any]] = {
    "session.update": TypeAdapter(SessionUpdate),
    "input_audio_buffer.append": TypeAdapter(AudioAppend),
    "input_audio_buffer.commit": TypeAdapter(AudioCommit),
    "input_audio_buffer.clear": TypeAdapter(AudioClear),
    "response.create": TypeAdapter(ResponseCreate),
    "response.cancel": TypeAdapter(ResponseCancel),
}


def parse_client_event(text: str | bytes) -> ClientEvent:
    """One WebSocket message as a client event; a refusal carries the event's `event_id` when
    it has one, so the client can match the error to what it sent."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise Refusal(f"the message is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise Refusal("an event must be a JSON object", code="invalid_json")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    adapter = _EVENTS.get(kind) if isinstance(kind, str) else None
    if adapter is None:
        supported = ", ".join(sorted(_EVENTS))
        raise Refusal(f"unsupported event type {kind!r} (supported: {supported})", param="type", event_id=event_id)
    try:
        return adapter.validate_python(raw)
    except ValidationError as e:
        message, param = validation_message(list(e.errors()))
        raise Refusal(message, param=param or "", event_id=event_id) from None
