"""What a voice session takes and gives, in domain terms: the API edges (gRPC `Converse`, the
Realtime WebSocket) convert their messages to and from these."""

from __future__ import annotations

from dataclasses import dataclass

from museserve.domain import ChatRequest, StreamEvent

PCM16 = "pcm16"  # signed 16-bit little-endian mono: the one encoding a session takes


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """A session's settings, fixed when it opens."""

    # The conversation so far and how to answer (model, mode, sampling, tools). Its messages hold
    # text only; each turn's speech becomes a new user message after them.
    request: ChatRequest
    sample_rate_hz: int
    encoding: str = PCM16
    # Server end-of-speech detection: a turn ends after this much silence that follows speech.
    vad_silence_ms: int | None = None
    # The answer starts when the speech ends; False: only at `VoiceSession.respond` (Realtime
    # clients without turn detection send `response.create`).
    auto_respond: bool = True
    # Where errors point: the edge's names for an audio chunk's data and the audio format.
    audio_field: str = "audio.data"
    format_field: str = "audio_format"


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    turn: int  # from 0


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    turn: int
    audio_seconds: float
    audio_tokens: int
    detected: bool  # by the server's end-of-speech detection, not the client's marker


@dataclass(frozen=True, slots=True)
class AnswerEvent:
    """An event of the turn's answer, in `Gateway.stream`'s order (deltas, one Usage, one Finish).
    An answer cut off by new speech or `cancel_answer` finishes CANCELLED, its usage counting
    only the tokens it streamed."""

    turn: int
    event: StreamEvent


VoiceEvent = SpeechStarted | SpeechEnded | AnswerEvent
