from __future__ import annotations

import math
import statistics
import time

import numpy as np
import pytest
import soundfile as sf

from museserve.config import MediaLimits
from museserve.errors import InvalidArgument
from museserve.preprocess.audio import load_audio
from museserve.preprocess.audio_mel import PAD_VALUE, clip_log_mel, mel_filterbank, mel_spec
from museserve.preprocess.audio_resample import resample_clip
from tests.audio_corpus import corrupt_clips, encode, flac_claiming, tone, valid_clips
from tests.support import call_within

FIELD = "messages[0].content[2].audio"
LIMITS = MediaLimits()  # 16 kHz, 80 mel bins, 4 frames per token


def features(data: bytes, fmt: str = "wav", limits: MediaLimits = LIMITS):
    return load_audio(data, fmt, limits, FIELD)


def rows_of(feats) -> np.ndarray:
    return np.frombuffer(feats.rows, dtype=np.float16).reshape(feats.num_tokens, feats.feature_dim)


def expected_tokens(frames: int, rate: int, per_token: int = 4) -> int:
    """Samples at 16 kHz -> ceil(n / 160) 10 ms frames -> ceil(frames / per_token) tokens."""
    samples = math.ceil(frames * 16_000 / rate)
    return math.ceil(math.ceil(samples / 160) / per_token)


@pytest.mark.parametrize("clip", valid_clips(), ids=lambda c: c.name)
def test_valid_clips_decode(clip):
    feats = features(clip.data, clip.fmt)
    assert feats.num_tokens == expected_tokens(clip.frames, clip.rate)
    assert feats.feature_dim == 80 * 4
    assert feats.seconds == pytest.approx(clip.frames / clip.rate)
    assert np.isfinite(rows_of(feats)).all()


@pytest.mark.parametrize(
    ("samples", "per_token", "tokens"), [(16_000, 4, 25), (16_001, 4, 26), (16_000, 1, 100), (1, 4, 1)]
)
def test_token_count_rule(samples, per_token, tokens):
    limits = MediaLimits(audio_frames_per_token=per_token)
    feats = features(encode(tone(440.0, samples / 16_000, 16_000), 16_000), limits=limits)
    assert feats.num_tokens == tokens
    assert len(feats.rows) == tokens * 80 * per_token * 2  # float16


def spectrum_peak_hz(y: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / rate)[spec.argmax()])


def rms_gain(freq_hz: float, rate_in: int, rate_out: int) -> tuple[float, np.ndarray]:
    x = tone(freq_hz, 1.0, rate_in)[:, 0]
    y = resample_clip(x, rate_in, rate_out)
    assert len(y) == math.ceil(len(x) * rate_out / rate_in)
    core = y[rate_out // 10 : -rate_out // 10]  # away from the zero-padded edges
    return float(np.sqrt((core**2).mean()) / np.sqrt((x**2).mean())), core


def test_resample_keeps_frequency_and_level():
    gain, y = rms_gain(1000.0, 44_100, 16_000)
    assert spectrum_peak_hz(y, 16_000) == pytest.approx(1000.0, abs=2.0)
    assert gain == pytest.approx(1.0, abs=1e-3)


def test_resample_filters_above_the_new_nyquist():
    gain, _ = rms_gain(11_000.0, 44_100, 16_000)  # would alias to 5 kHz
    assert gain < 1e-3  # below -60 dB


@pytest.mark.parametrize(("rate_in", "rate_out"), [(8_000, 16_000), (48_000, 16_000), (22_050, 16_000)])
def test_resample_matches_the_tone_at_the_new_rate(rate_in, rate_out):
    y = resample_clip(tone(1000.0, 1.0, rate_in)[:, 0], rate_in, rate_out)
    reference = tone(1000.0, 1.0, rate_out)[:, 0]
    assert np.abs(y[200:-200] - reference[200:-200]).max() < 1e-4


def test_resample_passes_through_equal_rates():
    x = tone(440.0, 0.1, 16_000)[:, 0]
    assert np.array_equal(resample_clip(x, 16_000, 16_000), x)


def test_stereo_is_the_mean_of_its_channels():
    left = tone(440.0, 0.5, 16_000)
    stereo = np.concatenate([left, np.zeros_like(left)], axis=1)
    mixed = features(encode(stereo, 16_000, subtype="FLOAT"))
    assert mixed.digest == features(encode(left / 2, 16_000, subtype="FLOAT")).digest
    antiphase = features(encode(np.concatenate([left, -left], axis=1), 16_000, subtype="FLOAT"))
    assert (rows_of(antiphase) == np.float16(PAD_VALUE)).all()


def test_log_mel_of_silence_and_of_a_tone():
    silence = rows_of(features(encode(np.zeros((16_000, 1), np.float32), 16_000)))
    assert (silence == np.float16(PAD_VALUE)).all()
    mel = clip_log_mel(tone(1000.0, 1.0, 16_000)[:, 0], mel_spec(16_000, 80))
    assert mel.shape == (100, 80)
    fb = mel_filterbank(16_000, 400, 80)
    bin_1khz = int(fb[:, round(1000 / 40)].argmax())  # 40 Hz per FFT bin at n_fft 400
    loudest = mel[10:-10].mean(axis=0)
    assert int(loudest.argmax()) == bin_1khz
    assert loudest[bin_1khz] > 1.0 > PAD_VALUE + 1.0 > loudest[-10:].max()  # energy at 1 kHz, not near 8 kHz


@pytest.mark.parametrize("bad", corrupt_clips(), ids=lambda c: c.name)
def test_corrupt_clips_are_refused_with_the_field(bad):
    with pytest.raises(InvalidArgument) as info:
        features(bad.data, bad.fmt)
    assert info.value.field == FIELD
    assert bad.reason in info.value.message


def test_random_damage_only_ever_raises_invalid_argument():
    rng = np.random.default_rng(7)
    clips = [c for c in valid_clips(0.05) if c.channels == 2 and c.rate in (16_000, 44_100)]
    for _ in range(300):
        clip = clips[rng.integers(len(clips))]
        data = bytearray(clip.data)
        for pos in rng.integers(0, min(len(data), 96), size=rng.integers(1, 4)):
            data[pos] = rng.integers(256)
        try:
            features(bytes(data), clip.fmt)
        except InvalidArgument as e:
            assert e.field == FIELD


@pytest.fixture
def no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf.SoundFile, "read", refuse)


def test_a_header_claiming_ten_hours_is_refused_before_decoding(no_decoding):
    data = flac_claiming(10 * 3600)
    # The refusal comes from the header: no_decoding proves no samples are read.
    with pytest.raises(InvalidArgument, match="36000.0 s long"):
        call_within(5, features, data, "flac")


def test_limits_are_checked_before_decoding(no_decoding):
    two_seconds = encode(tone(440.0, 2.0, 16_000), 16_000)
    with pytest.raises(InvalidArgument, match="at most 1 s"):
        features(two_seconds, limits=MediaLimits(max_audio_seconds=1.0))
    with pytest.raises(InvalidArgument, match="needs 50 tokens"):
        features(two_seconds, limits=MediaLimits(max_request_media_tokens=40, max_image_tokens=40))
    with pytest.raises(InvalidArgument, match="bytes"):
        features(b"\0" * 101, limits=MediaLimits(max_audio_bytes=100))


def test_digest_is_stable_and_content_sensitive():
    samples = (tone(440.0, 0.5, 22_050, 2) * 32767).astype(np.int16)  # libsndfile's writers round floats apart
    digest = features(encode(samples, 22_050)).digest
    assert features(encode(samples, 22_050)).digest == digest
    assert features(encode(samples, 22_050, "flac"), "flac").digest == digest  # lossless: same samples
    samples[1000, 0] += 1
    assert features(encode(samples, 22_050)).digest != digest


def test_preprocess_cost_per_second_of_audio():
    data = encode(tone(440.0, 10.0, 44_100, 2), 44_100)
    features(data)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        features(data)
        runs.append(time.perf_counter() - start)
    print(f"audio_preprocess_ms_per_s p50 {statistics.median(runs) * 1000 / 10:.2f} (10 s, 44.1 kHz stereo WAV)")
