"""A Realtime session's settings: `session.update` applied to them, echoed as the session
object, and turned into the `VoiceSettings` the voice session opens with.

The defaults are OpenAI's, but for the output: 24 kHz PCM16 in, server VAD after 500 ms of
silence with an automatic answer, and text answers only (`["text"]`). Fields are named as the
client named them: an error about a setting names the field the client last set it by (GA's
`session.audio.input.format.rate` or beta's `session.input_audio_format`), else the dialect's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from museserve.api.openai.realtime_events import Dialect, Refusal
from museserve.api.openai.realtime_schemas import AudioFormat, ResponseFields, SessionFields, TurnDetection
from museserve.config.voice import VoiceConfig
from museserve.domain import ChatRequest, Message, Role, TextPart
from museserve.voice.events import VoiceSettings

DEFAULT_RATE_HZ = 24_000  # OpenAI's audio/pcm and pcm16
DEFAULT_SILENCE_MS = 500  # OpenAI's server_vad default
AUDIO_FIELD = "audio"  # input_audio_buffer.append's field


@dataclass(frozen=True, slots=True)
class ServerVad:
    silence_ms: int = DEFAULT_SILENCE_MS
    create_response: bool = True


@dataclass(frozen=True, slots=True)
class RealtimeSettings:
    instructions: str = ""
    sample_rate_hz: int = DEFAULT_RATE_HZ
    turn_detection: ServerVad | None = ServerVad()
    max_output_tokens: int | None = None  # None: the pool's default
    temperature: float | None = None


_GA_FORMAT, _BETA_FORMAT = "session.audio.input.format", "session.input_audio_format"
_GA_TURNS, _BETA_TURNS = "session.audio.input.turn_detection", "session.turn_detection"

# Each setting's param, keyed by `RealtimeSettings` field (and "format", "silence_ms").
DEFAULT_PARAMS: dict[Dialect, dict[str, str]] = {
    Dialect.GA: {
        "instructions": "session.instructions",
        "format": _GA_FORMAT,
        "sample_rate_hz": f"{_GA_FORMAT}.rate",
        "turn_detection": _GA_TURNS,
        "silence_ms": f"{_GA_TURNS}.silence_duration_ms",
        "max_output_tokens": "session.max_output_tokens",
        "temperature": "session.temperature",
    },
    Dialect.BETA: {
        "instructions": "session.instructions",
        "format": _BETA_FORMAT,
        "sample_rate_hz": _BETA_FORMAT,
        "turn_detection": _BETA_TURNS,
        "silence_ms": f"{_BETA_TURNS}.silence_duration_ms",
        "max_output_tokens": "session.max_response_output_tokens",
        "temperature": "session.temperature",
    },
}

# The voice session's field names (a `MuseError.field`) -> the setting they come from.
_SETTING_OF_FIELD: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), key)
    for p, key in [
        (r"(^|\.)sample_rate_hz$", "sample_rate_hz"),
        (r"(^|\.)(encoding|audio_format)$", "format"),
        (r"vad_silence_ms$", "silence_ms"),
        (r"^(request\.)?messages\b", "instructions"),
        (r"^(request\.)?sampling\.max_output_tokens$", "max_output_tokens"),
        (r"^(request\.)?sampling\.temperature$", "temperature"),
    ]
]
_MODEL_FIELD = re.compile(r"^(request\.)?(model|adapter|mode(\..+)?)$")
# Fields no Realtime client sets: the call itself (`end_of_speech`, `response`) or the headers.
_NO_PARAM = re.compile(r"^(end_of_speech|response|metadata\..*)$")


def param_of(field: str, params: Mapping[str, str]) -> str | None:
    """The client's name of a voice session field; the connection's `model` for the model."""
    for pattern, key in _SETTING_OF_FIELD:
        if pattern.search(field):
            return params[key]
    if _MODEL_FIELD.match(field):
        return "model"
    return None if _NO_PARAM.match(field) else field or None


def apply_update(
    current: RealtimeSettings, session: SessionFields, models: tuple[str, ...], voice: VoiceConfig
) -> tuple[RealtimeSettings, dict[str, str]]:
    """`current` with the fields `session` holds, and the params the client set them by.
    `models`: the names the connection's model goes by (as asked, as served)."""
    present = session.model_fields_set
    _refuse_unsupported(session, models)
    changes: dict[str, Any] = {}
    params: dict[str, str] = {}
    if "instructions" in present:
        changes["instructions"] = session.instructions or ""
    audio_input = session.audio.input if session.audio is not None else None
    if audio_input is not None and audio_input.format is not None:
        changes["sample_rate_hz"] = _pcm_rate(audio_input.format, _GA_FORMAT, voice)
        params.update(format=_GA_FORMAT, sample_rate_hz=f"{_GA_FORMAT}.rate")
    if session.input_audio_format is not None:
        if session.input_audio_format != "pcm16":
            raise Refusal(f"{session.input_audio_format!r} is not supported: send pcm16", param=_BETA_FORMAT)
        changes["sample_rate_hz"] = DEFAULT_RATE_HZ
        params.update(format=_BETA_FORMAT, sample_rate_hz=_BETA_FORMAT)
    if audio_input is not None and "turn_detection" in audio_input.model_fields_set:
        changes["turn_detection"] = _server_vad(audio_input.turn_detection, _GA_TURNS)
        params.update(turn_detection=_GA_TURNS, silence_ms=f"{_GA_TURNS}.silence_duration_ms")
    if "turn_detection" in present:
        changes["turn_detection"] = _server_vad(session.turn_detection, _BETA_TURNS)
        params.update(turn_detection=_BETA_TURNS, silence_ms=f"{_BETA_TURNS}.silence_duration_ms")
    for name in ("max_output_tokens", "max_response_output_tokens"):
        if name in present:
            value = getattr(session, name)
            changes["max_output_tokens"] = None if value in (None, "inf") else value
            params["max_output_tokens"] = f"session.{name}"
    if "temperature" in present:
        changes["temperature"] = session.temperature
    return replace(current, **changes), params


def refuse_response_settings(response: ResponseFields) -> None:
    """A response takes the session's settings: `response.create` may only ask for text, in the
    session's conversation (`metadata` is accepted and ignored)."""
    for name, value in response:
        if name in ("output_modalities", "modalities"):
            if value is not None and value != ["text"]:
                raise Refusal('answers are text only: set ["text"]', param=f"response.{name}")
        elif value is not None and name != "metadata" and (name, value) != ("conversation", "auto"):
            message = "is not supported by this server: a response takes the session's settings"
            raise Refusal(message, param=f"response.{name}")


def _refuse_unsupported(session: SessionFields, models: tuple[str, ...]) -> None:
    if session.type not in (None, "realtime"):
        raise Refusal(f"{session.type!r} sessions are not supported: use realtime", param="session.type")
    if session.model is not None and session.model not in models:
        raise Refusal("the model is the connection's own: set it in the URL (?model=)", param="session.model")
    for name in ("output_modalities", "modalities"):
        value = getattr(session, name)
        if value is not None and value != ["text"]:
            raise Refusal('answers are text only: set ["text"]', param=f"session.{name}")
    audio_input = session.audio.input if session.audio is not None else None
    unsupported = {
        "session.tools": session.tools or None,
        "session.reasoning": session.reasoning,
        "session.prompt": session.prompt,
        "session.input_audio_transcription": session.input_audio_transcription,
        "session.audio.input.transcription": audio_input.transcription if audio_input is not None else None,
    }
    for param, value in unsupported.items():
        if value is not None:
            raise Refusal("is not supported by this server", param=param)


def _pcm_rate(audio_format: AudioFormat, where: str, voice: VoiceConfig) -> int:
    if audio_format.type not in (None, "audio/pcm"):
        raise Refusal(f"{audio_format.type!r} is not supported: send audio/pcm", param=f"{where}.type")
    rate = audio_format.rate or DEFAULT_RATE_HZ
    if not voice.min_sample_rate_hz <= rate <= voice.max_sample_rate_hz:
        bounds = f"{voice.min_sample_rate_hz} to {voice.max_sample_rate_hz}"
        raise Refusal(f"must be from {bounds} Hz", param=f"{where}.rate")
    return rate


def _server_vad(detection: TurnDetection | None, where: str) -> ServerVad | None:
    if detection is None:
        return None
    if detection.type != "server_vad":
        raise Refusal(f"{detection.type!r} is not supported: use server_vad or null", param=f"{where}.type")
    if detection.interrupt_response is False:
        raise Refusal("speech always cuts an answer off: leave it out", param=f"{where}.interrupt_response")
    if detection.idle_timeout_ms is not None:
        raise Refusal("is not supported by this server", param=f"{where}.idle_timeout_ms")
    silence = DEFAULT_SILENCE_MS if detection.silence_duration_ms is None else detection.silence_duration_ms
    return ServerVad(silence, detection.create_response is not False)


def voice_settings(settings: RealtimeSettings, base: ChatRequest) -> VoiceSettings:
    """`base`: the connection's model, mode and identity."""
    system = (Message(Role.SYSTEM, (TextPart(settings.instructions),)),) if settings.instructions else ()
    sampling = replace(base.sampling, max_output_tokens=settings.max_output_tokens, temperature=settings.temperature)
    vad = settings.turn_detection
    return VoiceSettings(
        request=replace(base, messages=system, sampling=sampling),
        sample_rate_hz=settings.sample_rate_hz,
        vad_silence_ms=vad.silence_ms if vad is not None else None,
        auto_respond=vad.create_response if vad is not None else False,
        audio_field=AUDIO_FIELD,
    )


def session_json(settings: RealtimeSettings, dialect: Dialect, session_id: str, model: str) -> dict[str, Any]:
    vad = settings.turn_detection
    turns = None
    if vad is not None:
        turns = {"type": "server_vad", "silence_duration_ms": vad.silence_ms,
                 "create_response": vad.create_response, "interrupt_response": True}  # fmt: skip
    max_tokens = settings.max_output_tokens or "inf"
    if dialect is Dialect.BETA:
        # No `model`: beta's session object admits only OpenAI's model names there.
        return {
            "id": session_id, "modalities": ["text"],
            "instructions": settings.instructions, "input_audio_format": "pcm16", "turn_detection": turns,
            "temperature": settings.temperature, "max_response_output_tokens": max_tokens,
        }  # fmt: skip
    audio_format = {"type": "audio/pcm", "rate": settings.sample_rate_hz}
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["text"], "instructions": settings.instructions, "max_output_tokens": max_tokens,
        "audio": {"input": {"format": audio_format, "turn_detection": turns}},
    }  # fmt: skip
