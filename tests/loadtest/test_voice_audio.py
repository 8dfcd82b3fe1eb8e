"""Speech for voice workloads: synthetic utterances (deterministic, the right length, within
PCM16, speech-like pauses and band) and corpus clips (mixed down, resampled, cut)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from museserve_loadtest.voice_audio import (
    PEAK,
    UtteranceSource,
    clip_pcm,
    corpus_files,
    resample,
    synthetic_speech,
)
from museserve_loadtest.voice_workload import SYNTHETIC_MAX_PAUSE_MS


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def _longest_quiet_ms(samples: np.ndarray, rate: int, threshold_db: float = -45.0) -> int:
    """The longest run of 10 ms frames quieter than `threshold_db` dBFS, as a server's
    end-of-speech detection sees it."""
    frame = rate // 100
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame).astype(float) / 32768
    quiet = 10 * np.log10((frames**2).mean(axis=1) + 1e-12) < threshold_db
    longest = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        longest = max(longest, run)
    return longest * 10


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100])
def test_synthetic_speech_has_the_length_asked_and_stays_within_pcm16(rate: int):
    pcm = synthetic_speech(3.7, rate, seed=11)
    samples = _samples(pcm)
    assert len(pcm) == 2 * round(3.7 * rate) and samples.dtype == np.int16
    assert abs(np.abs(samples.astype(int)).max() - PEAK * 32768) <= 1  # normalised: loud, never clipped
    assert np.sqrt(np.mean((samples / 32768) ** 2)) > 0.05  # mostly speech, not silence


def test_synthetic_speech_is_deterministic_per_seed():
    assert synthetic_speech(2.0, 16_000, seed=3) == synthetic_speech(2.0, 16_000, seed=3)
    assert synthetic_speech(2.0, 16_000, seed=3) != synthetic_speech(2.0, 16_000, seed=4)


@pytest.mark.parametrize("seed", range(4))
def test_its_pauses_are_short_enough_for_end_of_speech_detection(seed: int):
    samples = _samples(synthetic_speech(10.0, 16_000, seed))
    longest = _longest_quiet_ms(samples, 16_000)
    assert 0 < longest <= SYNTHETIC_MAX_PAUSE_MS  # pauses between words, none a turn's end


def test_its_energy_lies_in_the_speech_band_below_nyquist():
    rate = 16_000
    samples = _samples(synthetic_speech(5.0, rate, seed=1)) / 32768
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    assert power[(freqs >= 80) & (freqs <= 6_000)].sum() / power.sum() > 0.99
    assert power[freqs > 0.45 * rate].sum() / power.sum() < 1e-4


def test_an_empty_utterance_is_refused():
    with pytest.raises(ValueError, match="at least one sample"):
        synthetic_speech(0.00001, 8_000, seed=0)


def _clip(path: Path, seconds: float, rate: int, channels: int = 1) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 300 * t)
    sf.write(path, np.stack([tone] * channels, axis=1), rate, subtype="PCM_16")
    return path


def test_corpus_clips_are_listed_mixed_down_resampled_and_cut(tmp_path: Path):
    _clip(tmp_path / "b.flac", 1.0, 16_000)
    _clip(tmp_path / "a.wav", 2.0, 48_000, channels=2)
    (tmp_path / "notes.txt").write_text("not audio")
    files = corpus_files(tmp_path)
    assert [f.name for f in files] == ["a.wav", "b.flac"]
    pcm = clip_pcm(files[0], 16_000, max_seconds=1.5)
    assert len(pcm) == 2 * 24_000  # 48 kHz stereo -> 16 kHz mono, cut at 1.5 s
    source = UtteranceSource(16_000, files, max_seconds=1.5)
    assert source.pcm(9.0, seed=1, corpus_index=1) == clip_pcm(files[1], 16_000, 1.5)
    assert source.pcm(0.5, seed=1) == synthetic_speech(0.5, 16_000, 1)


def test_a_corpus_must_hold_clips(tmp_path: Path):
    with pytest.raises(ValueError, match="not a directory"):
        corpus_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="no .wav or .flac"):
        corpus_files(tmp_path)


def test_resampling_keeps_the_duration_and_the_tone():
    rate = 48_000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    out = resample(tone, rate, 16_000)
    assert len(out) == 16_000
    peak_hz = np.fft.rfftfreq(len(out), 1 / 16_000)[np.abs(np.fft.rfft(out)).argmax()]
    assert peak_hz == pytest.approx(440, abs=2)
    assert resample(tone, rate, rate) is tone
