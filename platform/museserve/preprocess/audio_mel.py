"""Log-mel frames of a signal, computed frame by frame so any grouping of frames gives the same bits.

Frame i of a signal y at `rate` covers y[i * hop - pad : i * hop - pad + win], zero outside the
signal (a centred STFT with constant padding): 25 ms periodic Hann window, 10 ms hop,
pad = win // 2. Power spectrum, Slaney mel filterbank (librosa's default scale and area
normalisation, 0 Hz to Nyquist), then `(log10(max(mel, 1e-10)) + 4) / 4` as in Whisper, without
Whisper's per-clip max clamp, so a frame's features depend on its own samples.

Whole clips are computed in large blocks of frames and live streams a few frames at a time; both
must give the same bits. So every step is per frame: numpy's FFT transforms each row on its own,
the mel projection is a fixed sequence of elementwise multiply-adds over each filter's few FFT
bins (not a matrix product, whose summation order may depend on the matrix shape), and the rest
is elementwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from museserve.preprocess.audio_frames import hop_length, num_frames, strided_rows

LOG_FLOOR = 1e-10
PAD_VALUE = (math.log10(LOG_FLOOR) + 4) / 4  # the normalised value of silence; pads the last token
_BLOCK_FRAMES = 512  # frames computed at once for a whole clip; bounds the [frames, win] buffer


@dataclass(frozen=True, slots=True, eq=False)
class MelSpec:
    """How frames at one rate are cut and projected to mel bins; cached per (rate, mel_bins)."""

    rate: int
    mel_bins: int
    win: int  # samples of one frame, also the FFT size
    hop: int
    pad: int  # frame i starts at sample i * hop - pad
    window: np.ndarray  # [win] float64 periodic Hann
    bank_bins: np.ndarray  # [mel_bins, width] int: FFT bins each filter reads, from its lowest
    bank_weights: np.ndarray  # [mel_bins, width] float64; 0 past a filter's last bin

    def window_samples(self, frames: int) -> int:
        """Samples that `frames` consecutive frames cover."""
        return (frames - 1) * self.hop + self.win if frames > 0 else 0


@functools.lru_cache(maxsize=8)
def mel_spec(rate: int, mel_bins: int) -> MelSpec:
    win, hop = round(rate * 0.025), hop_length(rate)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)
    bank = mel_filterbank(rate, win, mel_bins)
    nonzero = bank > 0
    used = nonzero.any(axis=1)  # a filter narrower than an FFT bin may read none
    first = np.where(used, nonzero.argmax(axis=1), 0)
    last = np.where(used, bank.shape[1] - 1 - nonzero[:, ::-1].argmax(axis=1), 0)
    width = int((last - first).max()) + 1
    bins = first[:, None] + np.arange(width)[None, :]  # [mel_bins, width]
    inside = bins <= last[:, None]
    bins = np.minimum(bins, bank.shape[1] - 1)
    weights = np.where(inside, np.take_along_axis(bank, bins, axis=1), 0.0)
    for shared in (window, bins, weights):
        shared.setflags(write=False)  # the spec is cached
    return MelSpec(rate, mel_bins, win, hop, win // 2, window, bins, weights)


def log_mel_frames(samples: np.ndarray, frames: int, spec: MelSpec) -> np.ndarray:
    """`frames` consecutive frames -> [frames, mel_bins] float32.

    `samples` is [spec.window_samples(frames)]: from the first frame's first sample to the last
    frame's last, zeros standing for samples outside the signal.
    """
    if len(samples) != spec.window_samples(frames):
        raise ValueError(f"{frames} frames need {spec.window_samples(frames)} samples, not {len(samples)}")
    if frames == 0:
        return np.empty((0, spec.mel_bins), np.float32)
    signal = np.ascontiguousarray(samples, dtype=np.float64)
    windowed = strided_rows(signal, spec.win, spec.hop, frames) * spec.window
    spectrum = np.fft.rfft(windowed)  # [frames, win // 2 + 1]
    power = np.ascontiguousarray((spectrum.real**2 + spectrum.imag**2).T)  # [bins, frames]
    mel = power[spec.bank_bins[:, 0]] * spec.bank_weights[:, :1]  # [mel_bins, frames]
    for j in range(1, spec.bank_bins.shape[1]):  # each filter's bins in order, whatever the frame count
        mel += power[spec.bank_bins[:, j]] * spec.bank_weights[:, j : j + 1]
    normalised = (np.log10(np.maximum(mel, LOG_FLOOR)) + 4) / 4
    return np.ascontiguousarray(normalised.T, dtype=np.float32)


def clip_log_mel(samples: np.ndarray, spec: MelSpec) -> np.ndarray:
    """[n] float32 -> [ceil(n / hop), mel_bins] float32, block by block."""
    frames = num_frames(len(samples), spec.rate)
    padded = np.zeros(spec.window_samples(frames), np.float32)  # at least pad + n: the frames cover every sample
    padded[spec.pad : spec.pad + len(samples)] = samples
    out = np.empty((frames, spec.mel_bins), np.float32)
    for start in range(0, frames, _BLOCK_FRAMES):
        count = min(_BLOCK_FRAMES, frames - start)
        first = start * spec.hop
        out[start : start + count] = log_mel_frames(padded[first : first + spec.window_samples(count)], count, spec)
    return out


def stack_frames(mel: np.ndarray, frames_per_token: int) -> np.ndarray:
    """[frames, bins] float32 -> [ceil(frames / k), k * bins] float16; a row is k consecutive frames,
    frame-major, the last row padded with PAD_VALUE frames."""
    frames, bins = mel.shape
    tokens = -(-frames // frames_per_token)
    padded = np.full((tokens * frames_per_token, bins), PAD_VALUE, dtype=np.float32)
    padded[:frames] = mel
    return padded.reshape(tokens, frames_per_token * bins).astype(np.float16)


@functools.lru_cache(maxsize=8)
def mel_filterbank(rate: int, n_fft: int, mel_bins: int) -> np.ndarray:
    """[mel_bins, n_fft // 2 + 1] float64: Slaney-scale triangles, each normalised to unit area in Hz."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(rate / 2), mel_bins + 2)
    edges = np.array([_mel_to_hz(float(m)) for m in mels])
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    weights = np.clip(np.minimum(rising, falling), 0, None) * (2 / (hi - lo))
    weights.setflags(write=False)  # cached and shared
    return weights


_SLANEY_LINEAR_HZ = 1000.0
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_STEP = math.log(6.4) / 27


def _hz_to_mel(hz: float) -> float:
    if hz < _SLANEY_LINEAR_HZ:
        return hz / _SLANEY_HZ_PER_MEL
    return _SLANEY_LINEAR_HZ / _SLANEY_HZ_PER_MEL + math.log(hz / _SLANEY_LINEAR_HZ) / _SLANEY_LOG_STEP


def _mel_to_hz(mel: float) -> float:
    linear_mels = _SLANEY_LINEAR_HZ / _SLANEY_HZ_PER_MEL
    if mel < linear_mels:
        return mel * _SLANEY_HZ_PER_MEL
    return _SLANEY_LINEAR_HZ * math.exp(_SLANEY_LOG_STEP * (mel - linear_mels))
