from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from museserve.config import MediaLimits
from museserve.errors import InvalidArgument
from museserve.preprocess.audio import load_audio
from museserve.preprocess.audio_resample import polyphase, resample_blocks
from museserve.preprocess.audio_stream import StreamingAudioFeatures, pcm16_to_float
from tests.audio_corpus import encode

LIMITS = MediaLimits()  # 16 kHz, 80 mel bins, 4 frames (40 ms) per token
RATES = (16_000, 8_000, 24_000, 44_100, 48_000)


def speech_like(samples: int, seed: int) -> np.ndarray:
    """[samples] int16: noisy tones under a slow envelope, silent stretches, full-scale peaks."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples)
    envelope = np.abs(np.sin(t / 3000.0 + seed)) * (rng.random() + 0.2)
    signal = envelope * (np.sin(t * 0.07) + 0.5 * np.sin(t * 0.31) + 0.3 * rng.standard_normal(samples))
    signal[(t // 2500) % 4 == 3] = 0.0  # digital silence: features at the log floor
    pcm = np.clip(np.round(signal * 20_000), -32768, 32767).astype(np.int16)
    pcm[rng.integers(0, samples, size=max(1, samples // 5000))] = -32768
    return pcm


def whole_clip(pcm: np.ndarray, rate: int, limits: MediaLimits = LIMITS):
    return load_audio(encode(pcm, rate), "wav", limits, "audio")


def split(total: int, chunking: str, rate: int, seed: int) -> list[int]:
    """Chunk sizes in samples summing to `total`."""
    if chunking == "one":
        return [total]
    if chunking == "10ms":
        step = rate // 100
        return [min(step, total - i) for i in range(0, total, step)]
    rng = np.random.default_rng(seed)
    sizes: list[int] = []
    while sum(sizes) < total:  # log-uniform in 1..8000: many small odd chunks, some large ones
        sizes.append(min(int(np.exp(rng.uniform(0, np.log(8000)))), total - sum(sizes)))
    return sizes


def streamed(pcm: np.ndarray, rate: int, sizes: list[int], limits: MediaLimits = LIMITS) -> tuple[bytes, int]:
    stream = StreamingAudioFeatures(rate, limits)
    data, rows, start = pcm.astype("<i2").tobytes(), [], 0
    for size in sizes:
        rows.append(stream.push(pcm16_to_float(data[2 * start : 2 * (start + size)])))
        start += size
    rows.append(stream.finish())
    return b"".join(rows), stream.num_tokens


def test_pcm16_scaling_is_soundfiles():
    every_value = np.arange(-32768, 32768, dtype=np.int16)
    decoded, _ = sf.read(io.BytesIO(encode(every_value, 16_000)), dtype="float32")
    assert np.array_equal(pcm16_to_float(every_value.astype("<i2").tobytes()), decoded)
    with pytest.raises(ValueError, match="2-byte"):
        pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("length", ["ragged", "whole", "tiny"])
@pytest.mark.parametrize("chunking", ["random", "one", "10ms"])
def test_streamed_rows_equal_the_whole_clips(rate: int, length: str, chunking: str):
    # ragged: no multiple of a hop or a token; whole: 1 s, 25 whole tokens; tiny: a few samples.
    samples = {"ragged": round(0.7313 * rate) + 1, "whole": rate, "tiny": 3 + rate // 8000}[length]
    pcm = speech_like(samples, seed=rate)
    clip = whole_clip(pcm, rate)
    rows, tokens = streamed(pcm, rate, split(len(pcm), chunking, rate, seed=len(pcm)))
    assert tokens == clip.num_tokens
    assert rows == clip.rows  # bit for bit


@pytest.mark.parametrize("samples", [1, 2, 3, 7, 159, 161, 639, 641])
def test_tiny_clips(samples: int):
    for rate in (16_000, 44_100):
        pcm = speech_like(samples, seed=samples)
        clip = whole_clip(pcm, rate)
        assert streamed(pcm, rate, [1] * samples) == (clip.rows, clip.num_tokens)


def test_other_limits():
    limits = MediaLimits(audio_mel_bins=16, audio_frames_per_token=1, audio_sample_rate=22_050)
    pcm = speech_like(20_011, seed=3)
    clip = whole_clip(pcm, 48_000, limits)
    assert streamed(pcm, 48_000, split(len(pcm), "random", 48_000, seed=5), limits) == (clip.rows, clip.num_tokens)


def test_blocks_resample_alike_however_grouped():
    """The exactness the stream rests on: splitting blocks between calls changes no bit."""
    poly = polyphase(44_100, 16_000)
    x = pcm16_to_float(speech_like(50 * poly.orig, seed=1).tobytes())
    window = np.concatenate([np.zeros(poly.width, np.float32), x, np.zeros(poly.width, np.float32)])
    blocks = len(x) // poly.orig
    whole = resample_blocks(poly, window, blocks)
    cuts = [0, 1, 2, 9, 30, 31, blocks]
    parts = [
        resample_blocks(poly, window[a * poly.orig : a * poly.orig + poly.window_samples(b - a)], b - a)
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    assert np.concatenate(parts).tobytes() == whole.tobytes()


@pytest.mark.parametrize(("rate", "late_tokens"), [(16_000, 1), (44_100, 2), (48_000, 2), (8_000, 2)])
def test_rows_are_emitted_as_the_audio_arrives(rate: int, late_tokens: int):
    stream = StreamingAudioFeatures(rate, LIMITS)
    pcm = pcm16_to_float(speech_like(3 * rate, seed=2).tobytes())
    step = rate // 100
    for start in range(0, len(pcm), step):
        stream.push(pcm[start : start + step])
        assert stream.num_tokens >= int(stream.seconds * 25) - late_tokens  # 25 tokens a second


def test_held_buffers_stay_small_over_a_long_stream():
    stream = StreamingAudioFeatures(44_100, LIMITS)
    rng = np.random.default_rng(4)
    chunk = pcm16_to_float(speech_like(44_100, seed=4).tobytes())
    for _ in range(1500):  # about 5 minutes of audio
        start = int(rng.integers(0, len(chunk) - 400))
        stream.push(chunk[start : start + int(rng.integers(1, 400))])
        # Resampler: 2 * width + orig inputs; log-mel: a token's hops and a window.
        assert stream.held_samples < 2 * 47 + 441 + 4 * 160 + 400
    assert stream.num_tokens >= int(stream.seconds * 25) - 2


def test_an_empty_stream_has_no_rows():
    stream = StreamingAudioFeatures(48_000, LIMITS)
    assert stream.finish() == b""
    assert stream.num_tokens == 0


def test_misuse_is_refused():
    with pytest.raises(InvalidArgument, match="cannot resample"):
        StreamingAudioFeatures(44_101, LIMITS)
    with pytest.raises(InvalidArgument, match="outside"):
        StreamingAudioFeatures(2_000, LIMITS)
    stream = StreamingAudioFeatures(16_000, LIMITS)
    with pytest.raises(ValueError, match="mono"):
        stream.push(np.zeros((10, 2), np.float32))
    stream.finish()
    with pytest.raises(RuntimeError, match="finished"):
        stream.push(np.zeros(10, np.float32))
