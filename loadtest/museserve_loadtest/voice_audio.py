"""Speech for voice workloads: synthetic utterances drawn from a seed, or clips of a corpus,
as mono PCM16 at the session's rate.

Synthetic speech is speech-like where a server looks: syllables of 80-300 ms, voiced (the
harmonics of a gliding pitch, weighted by two formant peaks) or unvoiced (band-limited noise),
each with a smooth attack and release, and pauses of at most SYNTHETIC_MAX_PAUSE_MS between
words. Everything stays below 0.45 x the sample rate, so nothing aliases. The same seconds,
rate and seed give the same bytes; the loudest sample is PEAK of full scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from museserve.talk.speech import to_pcm16

from .voice_workload import SYNTHETIC_MAX_PAUSE_MS

PEAK = 0.6
SYLLABLE_S = (0.08, 0.30)
VOICED_SHARE = 0.8
WORD_END_SHARE = 0.35  # syllables followed by a pause
MIN_PAUSE_S = 0.03
PITCH_HZ = (90.0, 220.0)  # the speaker's, drawn once per utterance
MAX_HARMONIC_HZ = 3500.0
AUDIO_SUFFIXES = frozenset({".wav", ".flac"})


def _envelope(length: int, sample_rate: int) -> np.ndarray:
    """sin^2 attack (15 ms) and release (40 ms), each at most a third of the syllable."""
    env = np.ones(length)
    for ramp_s, sl in ((0.015, slice(None)), (0.040, slice(None, None, -1))):
        ramp = max(1, min(int(ramp_s * sample_rate), length // 3))
        env[sl][:ramp] *= np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
    return env


def _voiced(length: int, sample_rate: int, pitch: float, rng: np.random.Generator) -> np.ndarray:
    glide = pitch * np.linspace(rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), length)
    phase = 2 * np.pi * np.cumsum(glide) / sample_rate
    first, second = rng.uniform(300, 900), rng.uniform(900, 2500)  # formant peaks, Hz
    top = min(MAX_HARMONIC_HZ, 0.45 * sample_rate) / (pitch * 1.15)  # the glide reaches 1.15 x pitch
    harmonics = np.arange(1, max(1, int(top)) + 1)
    centres = harmonics * pitch
    weights = 0.05 + np.exp(-(((centres - first) / 150) ** 2)) + 0.5 * np.exp(-(((centres - second) / 250) ** 2))
    signal = (weights / np.sqrt(harmonics)) @ np.sin(np.outer(harmonics, phase))
    return signal / max(np.abs(signal).max(), 1e-9)


def _unvoiced(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.fft.rfftfreq(length, 1 / sample_rate)
    low = rng.uniform(1500, 3000)
    spectrum[(freqs < low) | (freqs > min(low + 3000, 0.45 * sample_rate))] = 0
    signal = np.fft.irfft(spectrum, length)
    return signal / max(np.abs(signal).max(), 1e-9)


def synthetic_speech(seconds: float, sample_rate: int, seed: int) -> bytes:
    """`round(seconds * sample_rate)` samples of speech-like PCM16 (see the module docstring)."""
    n = round(seconds * sample_rate)
    if n < 1:
        raise ValueError(f"an utterance needs at least one sample, got {seconds} s at {sample_rate} Hz")
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    pitch = rng.uniform(*PITCH_HZ)
    t = 0
    while t < n:
        length = min(int(rng.uniform(*SYLLABLE_S) * sample_rate), n - t)
        voiced = rng.random() < VOICED_SHARE
        syllable = _voiced(length, sample_rate, pitch, rng) if voiced else _unvoiced(length, sample_rate, rng)
        out[t : t + length] = syllable * _envelope(length, sample_rate) * rng.uniform(0.4, 1.0)
        t += length
        if rng.random() < WORD_END_SHARE:
            t += int(rng.uniform(MIN_PAUSE_S, SYNTHETIC_MAX_PAUSE_MS / 1000) * sample_rate)
    return to_pcm16(out * (PEAK / max(np.abs(out).max(), 1e-9)))


def corpus_files(directory: str | Path) -> list[Path]:
    """The WAV and FLAC files of `directory`, sorted by name (the order plans index)."""
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"voice.corpus {directory}: not a directory")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"voice.corpus {directory}: no .wav or .flac files")
    return files


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Linear interpolation: enough for load (the server resamples properly)."""
    if from_rate == to_rate or len(samples) == 0:
        return samples
    n = max(1, round(len(samples) * to_rate / from_rate))
    return np.interp(np.arange(n) * (from_rate / to_rate), np.arange(len(samples)), samples)


def clip_pcm(path: Path, sample_rate: int, max_seconds: float) -> bytes:
    """A corpus clip as mono PCM16 at `sample_rate`, cut to `max_seconds`."""
    samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = resample(samples.mean(axis=1), int(rate), sample_rate)
    return to_pcm16(mono[: round(max_seconds * sample_rate)])


class UtteranceSource:
    """Each turn's speech: a corpus clip (each file read once per run) when the turn names
    one, synthetic speech otherwise."""

    def __init__(self, sample_rate: int, corpus: Sequence[Path] = (), max_seconds: float = 600.0):
        self.sample_rate, self.corpus, self.max_seconds = sample_rate, tuple(corpus), max_seconds
        self._clips: dict[int, bytes] = {}

    def pcm(self, seconds: float, seed: int, corpus_index: int | None = None) -> bytes:
        if corpus_index is None:
            return synthetic_speech(seconds, self.sample_rate, seed)
        if corpus_index not in self._clips:
            self._clips[corpus_index] = clip_pcm(self.corpus[corpus_index], self.sample_rate, self.max_seconds)
        return self._clips[corpus_index]
