"""A voice session's bounds, checked as each message arrives and before any audio is encoded.

Fields in errors are the client's: the chunk's data for its size and alignment, the session's
audio format for the encoding and rate. Config keys are named in the message, so an operator
reading a client's error knows which bound to raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from museserve.config.voice import VoiceConfig
from museserve.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from museserve.preprocess.audio_frames import rate_refusal
from museserve.voice.events import PCM16, VoiceSettings

BYTES_PER_SAMPLE = 2  # PCM16 mono


def check_format(settings: VoiceSettings, config: VoiceConfig, feature_rate: int) -> None:
    """`feature_rate`: the rate speech is resampled to (`media.audio_sample_rate`)."""
    format_field = settings.format_field
    if settings.encoding != PCM16:
        raise InvalidArgument(
            f"audio encoding {settings.encoding!r} is not supported; send pcm16 (signed 16-bit little-endian mono)",
            field=f"{format_field}.encoding",
        )
    rate = settings.sample_rate_hz
    if not config.min_sample_rate_hz <= rate <= config.max_sample_rate_hz:
        raise InvalidArgument(
            f"sample rate {rate} Hz is outside {config.min_sample_rate_hz}..{config.max_sample_rate_hz} Hz",
            field=f"{format_field}.sample_rate_hz",
        )
    refusal = rate_refusal(rate, feature_rate)
    if refusal is not None:
        raise InvalidArgument(refusal, field=f"{format_field}.sample_rate_hz")
    silence = settings.vad_silence_ms
    if silence is not None and not 10 <= silence <= 5000:
        raise InvalidArgument(f"{silence} ms is outside 10..5000 ms", field="server_vad_silence_ms")


class ChunkGate:
    """Per chunk: its size and alignment, the session's chunk rate (a token bucket holding one
    second's worth), the session's length and the turn's speech. `touch` marks activity for
    the idle timeout, which the session's watchdog reads through `idle_for_s`."""

    def __init__(self, config: VoiceConfig, field: str, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.field = field  # the client's name for a chunk's data
        self._clock = clock
        self.opened_at = clock()
        self._last_activity = self.opened_at
        self._bucket = config.max_chunks_per_second
        self._filled_at = self.opened_at

    def touch(self) -> None:
        self._last_activity = self._clock()

    def idle_for_s(self) -> float:
        return self._clock() - self._last_activity

    def check_chunk(self, data: bytes) -> None:
        config = self.config
        now = self._clock()
        self._last_activity = now
        if not data:
            raise InvalidArgument("an audio chunk holds no samples", field=self.field)
        if len(data) > config.max_chunk_bytes:
            raise InvalidArgument(
                f"an audio chunk is {len(data)} bytes; at most {config.max_chunk_bytes} are accepted "
                "(voice.max_chunk_bytes)",
                field=self.field,
            )
        if len(data) % BYTES_PER_SAMPLE:
            raise InvalidArgument(f"{len(data)} bytes is not a whole number of 16-bit samples", field=self.field)
        rate = config.max_chunks_per_second
        self._bucket = min(rate, self._bucket + (now - self._filled_at) * rate)
        self._filled_at = now
        if self._bucket < 1:
            raise ResourceExhausted(
                f"audio chunks arrive faster than {rate:g} per second (voice.max_chunks_per_second); "
                "send fewer, larger chunks",
                retry_after_s=1 / rate,
            )
        self._bucket -= 1

    def check_session(self) -> None:
        """The session's wall-clock length; the watchdog and each message call it."""
        if self._clock() - self.opened_at > self.config.max_session_seconds:
            raise DeadlineExceeded(
                f"the session reached its length limit of {self.config.max_session_seconds:g} s "
                "(voice.max_session_seconds); open a new one"
            )

    def check_idle(self) -> None:
        if self.idle_for_s() > self.config.idle_timeout_s:
            raise DeadlineExceeded(
                f"the session sent nothing for {self.config.idle_timeout_s:g} s (voice.idle_timeout_s)"
            )

    def check_turn(self, seconds: float) -> None:
        limit = self.config.max_turn_seconds
        if seconds > limit:
            raise InvalidArgument(
                f"the turn's speech is {seconds:.2f} s; a turn holds at most {limit:g} s (voice.max_turn_seconds); "
                "end the turn sooner",
                field=self.field,
            )
