"""Speech as Converse streams it: mono PCM16 bytes cut into chunks of a fixed duration, the
time each chunk is due when sent at the pace it was spoken, and the messages that carry it.

Invariants:
- A chunk holds whole samples (an even number of bytes); only the last may be shorter.
- Chunk i is due `chunk_offsets(...)[i]` seconds after the speech started: the samples before
  it over the rate. `Pacer` waits for fixed points of one monotonic clock, so a late wake-up
  shortens the next wait instead of pushing every later chunk back (no drift).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from museserve.v1 import chat_pb2 as pb

PCM16_WIDTH = 2  # bytes per sample
# With server end-of-speech detection: how long after its trailing silence a client waits for
# `speech_ended` before it ends the turn with `end_of_speech` after all.
VAD_GRACE_S = 5.0
END_OF_SPEECH = pb.ConverseRequest(end_of_speech=pb.EndOfSpeech())


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1], as [frames] or [frames, channels] (channels averaged), as
    little-endian int16 bytes; louder samples are clipped. A PCM16 source read as floats
    (value / 32768) comes back bit for bit."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=1)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def read_speech(path: Path) -> tuple[bytes, int]:
    """A file soundfile reads (WAV, FLAC, ...) as mono PCM16 at the file's own rate."""
    import soundfile as sf  # deferred: libsndfile loads only where a file is read

    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return to_pcm16(samples), int(rate)


def silence(seconds: float, sample_rate: int) -> bytes:
    return bytes(PCM16_WIDTH * round(seconds * sample_rate))


def pcm16_seconds(pcm: bytes, sample_rate: int) -> float:
    return len(pcm) / PCM16_WIDTH / sample_rate


def split_chunks(pcm: bytes, sample_rate: int, chunk_ms: float) -> list[bytes]:
    """`pcm` in chunks of `chunk_ms` (rounded to whole samples, at least one)."""
    if len(pcm) % PCM16_WIDTH:
        raise ValueError(f"PCM16 holds whole 2-byte samples, got {len(pcm)} bytes")
    if chunk_ms <= 0:
        raise ValueError(f"the chunk duration must be > 0 ms, got {chunk_ms}")
    step = PCM16_WIDTH * max(1, round(sample_rate * chunk_ms / 1000))
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def chunk_offsets(chunks: Sequence[bytes], sample_rate: int, start_s: float = 0.0) -> list[float]:
    """When each chunk is due, in seconds from the speech's start; `start_s` shifts them all
    (the offset of the first chunk, for chunks that continue earlier speech)."""
    offsets, samples = [], 0
    for chunk in chunks:
        offsets.append(start_s + samples / sample_rate)
        samples += len(chunk) // PCM16_WIDTH
    return offsets


class Pacer:
    """Waits until fixed offsets from `start()`, on a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._clock, self._sleep = clock, sleep
        self._t0: float | None = None

    def start(self) -> float:
        self._t0 = self._clock()
        return self._t0

    def wait_until(self, offset_s: float) -> None:
        if self._t0 is None:
            raise RuntimeError("Pacer.start() first")
        if (delay := self._t0 + offset_s - self._clock()) > 0:
            self._sleep(delay)


def start_message(request: pb.ChatRequest, sample_rate: int, vad_silence_ms: int | None = None) -> pb.ConverseRequest:
    """The session's first message: `request` (model, mode, earlier messages, sampling) and
    PCM16 at `sample_rate`; with `vad_silence_ms` the server also ends turns on silence."""
    start = pb.SessionStart(
        request=request,
        audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=sample_rate),
    )
    if vad_silence_ms is not None:
        start.server_vad_silence_ms = vad_silence_ms
    return pb.ConverseRequest(start=start)


def audio_message(chunk: bytes) -> pb.ConverseRequest:
    return pb.ConverseRequest(audio=pb.AudioChunk(data=chunk))
