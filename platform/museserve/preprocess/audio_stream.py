"""Audio token rows of a live stream, emitted as the samples arrive, equal to the whole clip's rows.

A stream of mono chunks (any sizes) becomes the rows `audio.load_audio` gives for a clip of the
same samples, bit for bit: each row as soon as every sample it reads has arrived, the rest (the
zero-padded end, the PAD-filled last token) at `finish()`. Both paths share the per-block
resampler (`audio_resample`, exact sums) and the per-frame log-mel (`audio_mel`), so grouping
blocks and frames differently cannot change a bit. Each stage keeps only the tail of samples its
next outputs read (the resampler's 2 * width + orig inputs, a token's hops and one window at the
feature rate), so a push costs O(its own samples), however long the stream.
"""

from __future__ import annotations

import numpy as np

from museserve.config import MediaLimits
from museserve.errors import InvalidArgument
from museserve.preprocess.audio_frames import rate_refusal
from museserve.preprocess.audio_mel import MelSpec, log_mel_frames, mel_spec, stack_frames
from museserve.preprocess.audio_resample import Polyphase, polyphase, resample_blocks

PCM16_SCALE = 32768  # libsndfile reads 16-bit PCM as float the same way: int16 / 2^15, exactly


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Signed 16-bit little-endian mono PCM -> [len(data) // 2] float32 in [-1, 1)."""
    if len(data) % 2:
        raise ValueError(f"PCM16 audio holds whole 2-byte samples; got {len(data)} bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(PCM16_SCALE)


class StreamingAudioFeatures:
    """Mono float32 samples at `sample_rate_hz` -> float16 token rows, row-major [n, feature_dim]."""

    def __init__(self, sample_rate_hz: int, limits: MediaLimits):
        refusal = rate_refusal(sample_rate_hz, limits.audio_sample_rate)
        if refusal is not None:
            raise InvalidArgument(refusal, field="sample_rate_hz")
        self._rate = sample_rate_hz
        self._frames_per_token = limits.audio_frames_per_token
        self._resampler = _ResampleStream(sample_rate_hz, limits.audio_sample_rate)
        spec = mel_spec(limits.audio_sample_rate, limits.audio_mel_bins)
        self._frames = _FrameStream(spec, limits.audio_frames_per_token)
        self._finished = False
        self.feature_dim = limits.audio_feature_dim
        self.num_tokens = 0  # rows emitted so far

    @property
    def seconds(self) -> float:
        return self._resampler.received / self._rate

    @property
    def held_samples(self) -> int:
        """Input and resampled samples kept for rows not yet emitted; bounded, however long the stream."""
        return self._resampler.held_samples + self._frames.held_samples

    def push(self, samples: np.ndarray) -> bytes:
        """The rows these samples complete (possibly none): float16 bytes, row-major [n, feature_dim]."""
        if self._finished:
            raise RuntimeError("the stream is finished")
        if samples.ndim != 1:
            raise ValueError(f"samples are [n] mono; got shape {samples.shape}")
        mono = np.clip(samples.astype(np.float32), -1.0, 1.0)  # as a decoded clip is clipped
        return self._rows(self._frames.push(self._resampler.push(mono)))

    def finish(self) -> bytes:
        """The remaining rows, the clip's end zero-padded and its last token PAD-filled as for a whole clip."""
        if self._finished:
            raise RuntimeError("the stream is finished")
        self._finished = True
        tail = self._frames.push(self._resampler.finish())
        return self._rows(np.concatenate([tail, self._frames.finish()]))

    def _rows(self, mel: np.ndarray) -> bytes:
        rows = stack_frames(mel, self._frames_per_token)  # [tokens, feature_dim] float16
        self.num_tokens += len(rows)
        return rows.tobytes()


class _ResampleStream:
    """Input samples -> the resampled samples no later input can change, block by block."""

    def __init__(self, rate_in: int, rate_out: int):
        self._poly: Polyphase | None = None if rate_in == rate_out else polyphase(rate_in, rate_out)
        width = 0 if self._poly is None else self._poly.width
        self._held = np.zeros(width, np.float32)  # inputs from next_block * orig - width on
        self._next_block = 0
        self.received = 0

    @property
    def held_samples(self) -> int:
        return len(self._held)

    def push(self, samples: np.ndarray) -> np.ndarray:
        self.received += len(samples)
        if self._poly is None:
            return samples
        self._held = np.concatenate([self._held, samples])
        ready = max(0, (self.received - self._poly.width) // self._poly.orig)  # block k reads to (k+1)*orig+width
        return self._blocks(ready - self._next_block, self._held)

    def finish(self) -> np.ndarray:
        """The last blocks, reading zeros past the end, cut to ceil(received * new / orig) outputs in all."""
        poly = self._poly
        if poly is None:
            return np.empty(0, np.float32)
        blocks = self.received // poly.orig + 1 - self._next_block  # as many blocks as `resample_clip` computes
        window = np.zeros(poly.window_samples(blocks), np.float32)
        window[: len(self._held)] = self._held
        emitted = self._next_block * poly.new
        total = -(-self.received * poly.new // poly.orig)
        return self._blocks(blocks, window)[: total - emitted]

    def _blocks(self, blocks: int, window: np.ndarray) -> np.ndarray:
        poly = self._poly
        if poly is None or blocks <= 0:
            return np.empty(0, np.float32)
        out = resample_blocks(poly, window[: poly.window_samples(blocks)], blocks)
        self._held = self._held[blocks * poly.orig :]
        self._next_block += blocks
        return out


class _FrameStream:
    """Samples at the feature rate -> log-mel frames, a token's worth once its last sample has arrived."""

    def __init__(self, spec: MelSpec, frames_per_token: int):
        self._spec = spec
        self._frames_per_token = frames_per_token
        self._held = np.zeros(spec.pad, np.float32)  # samples from next_frame * hop - pad on
        self._next_frame = 0
        self._received = 0

    @property
    def held_samples(self) -> int:
        return len(self._held)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """[n] float32 -> [frames, mel_bins] float32, whole tokens' frames only."""
        spec = self._spec
        self._received += len(samples)
        self._held = np.concatenate([self._held, samples])
        reach = self._received + spec.pad - spec.win  # frame i ends at i * hop - pad + win
        ready = reach // spec.hop + 1 if reach >= 0 else 0
        ready -= ready % self._frames_per_token  # a token's frames together, once its last one can be
        return self._frames(ready - self._next_frame, self._held)

    def finish(self) -> np.ndarray:
        """The last frames, reading zeros past the end: ceil(received / hop) frames in all."""
        spec = self._spec
        frames = -(-self._received // spec.hop) - self._next_frame
        window = np.zeros(spec.window_samples(frames), np.float32)
        kept = min(len(self._held), len(window))
        window[:kept] = self._held[:kept]
        return self._frames(frames, window)

    def _frames(self, frames: int, window: np.ndarray) -> np.ndarray:
        spec = self._spec
        if frames <= 0:
            return np.empty((0, spec.mel_bins), np.float32)
        out = log_mel_frames(window[: spec.window_samples(frames)], frames, spec)
        self._held = self._held[frames * spec.hop :]
        self._next_frame += frames
        return out
