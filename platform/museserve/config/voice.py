"""The gateway's `voice` section: the bounds of a live voice session (`Converse`, the
Realtime WebSocket). Each is enforced as the audio arrives, before the audio is encoded."""

from __future__ import annotations

from pydantic import Field, model_validator

from museserve.config.base import Section


class VoiceConfig(Section):
    enabled: bool = Field(True, description="Serve Converse and the Realtime WebSocket.")
    max_turn_seconds: float = Field(120.0, gt=0, description="Speech in one user turn.")
    max_session_seconds: float = Field(1800.0, gt=0, description="Wall-clock length of one session.")
    max_chunk_bytes: int = Field(64 << 10, ge=2, description="Bytes of one audio chunk.")
    max_chunks_per_second: float = Field(
        200.0, gt=0, description="Chunks a session may send per second (a bucket holding one second's worth)."
    )
    idle_timeout_s: float = Field(30.0, gt=0, description="A session that sends nothing for this long ends.")
    min_sample_rate_hz: int = Field(8000, ge=4000, description="Lowest accepted sample rate.")
    max_sample_rate_hz: int = Field(48000, le=96000, description="Highest accepted sample rate.")
    vad_threshold_db: float = Field(
        -45.0, le=0, description="Server end-of-speech detection: a 10 ms frame louder than this (dBFS) is speech."
    )

    @model_validator(mode="after")
    def _rates_ordered(self) -> VoiceConfig:
        if self.min_sample_rate_hz > self.max_sample_rate_hz:
            raise ValueError("voice.min_sample_rate_hz is above voice.max_sample_rate_hz")
        return self
