"""The `voice` section of a workload: live voice sessions over Converse (gRPC only).

A session is one Converse call of `turns` spoken turns. Each turn streams an utterance
(synthetic speech of `utterance_s` seconds, or a clip of `corpus`) as PCM16 at
`sample_rate` in `chunk_ms` chunks, at the pace it is spoken, then ends its speech with
`end_of_speech` (or, with `server_vad_silence_ms`, with that much silence for the server to
detect), waits for the answer's `finish`, pauses `think_time_s`, and the next turn follows.
The session's request draws its mode from the workload's `modes` and its answer bound from
`output_tokens`; `system_prompt_words` gives it a system prompt.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .workload_fields import Fixed, Length, SecondsRange, Strict

SYNTHETIC_MAX_PAUSE_MS = 200  # the longest pause inside a synthetic utterance
VAD_MARGIN_MS = 100  # a detection threshold this much above it never splits an utterance
VOICE_MODES = ("instant", "thinking")  # the modes a Converse session accepts


class UtteranceSeconds(SecondsRange):
    """Uniform in [min, max] seconds of speech, none empty."""

    min: float = Field(gt=0, le=600)
    max: float = Field(gt=0, le=600)


class VoiceSection(Strict):
    turns: Length = Fixed(value=3)
    utterance_s: UtteranceSeconds = UtteranceSeconds(min=3, max=10)
    think_time_s: SecondsRange = SecondsRange(min=0.5, max=2.0)
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)
    chunk_ms: int = Field(20, ge=10, le=200)
    realtime: bool = Field(True, description="pace the chunks as spoken; false: send each utterance at once")
    system_prompt_words: Length | None = None
    corpus: str | None = Field(
        None, description="a directory of WAV/FLAC clips to speak instead of synthetic speech (cut to utterance_s.max)"
    )
    server_vad_silence_ms: int | None = Field(None, ge=10, le=5000)

    @model_validator(mode="after")
    def _detection_never_splits_synthetic_speech(self) -> VoiceSection:
        threshold = SYNTHETIC_MAX_PAUSE_MS + VAD_MARGIN_MS
        if self.corpus is None and self.server_vad_silence_ms is not None and self.server_vad_silence_ms < threshold:
            raise ValueError(
                f"server_vad_silence_ms must be >= {threshold} with synthetic speech, whose pauses reach "
                f"{SYNTHETIC_MAX_PAUSE_MS} ms: a shorter one would split an utterance into turns"
            )
        return self
