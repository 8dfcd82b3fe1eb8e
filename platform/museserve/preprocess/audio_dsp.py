"""The signal processing behind audio tokens, in torch: band-limited resampling and log-mel frames.

Log-mel: 25 ms Hann window, 10 ms hop, power spectrum, Slaney mel filterbank (librosa's default
scale and area normalisation, 0 Hz to Nyquist), then `(log10(max(mel, 1e-10)) + 4) / 4` as in
Whisper, without Whisper's per-clip max clamp, so a frame's features depend on its own samples.
"""

from __future__ import annotations

import functools
import math

import torch

from museserve.preprocess.audio_frames import KAISER_BETA, cutoff, half_width, hop_length, num_frames

LOG_FLOOR = 1e-10
PAD_VALUE = (math.log10(LOG_FLOOR) + 4) / 4  # the normalised value of silence; pads the last token


@functools.lru_cache(maxsize=16)
def _resample_kernel(orig: int, new: int) -> torch.Tensor:
    """[new, 1, orig + 2 * width] float32; row p holds phase p's taps for input offsets -width..orig+width-1."""
    fc, width = cutoff(orig, new), half_width(orig, new)
    m = torch.arange(-width, orig + width, dtype=torch.float64)
    t = torch.arange(new, dtype=torch.float64)[:, None] * orig / new - m[None, :]  # [new, taps]
    beta = torch.tensor(KAISER_BETA, dtype=torch.float64)
    window = torch.special.i0(beta * torch.sqrt((1 - (t / width) ** 2).clamp(min=0))) / torch.special.i0(beta)
    window = torch.where(t.abs() <= width, window, torch.zeros_like(window))
    return (2 * fc * torch.sinc(2 * fc * t) * window).to(torch.float32)[:, None, :]


def resample(samples: torch.Tensor, rate_in: int, rate_out: int) -> torch.Tensor:
    """[n] float32 -> [ceil(n * rate_out / rate_in)] float32; the very samples when the rates match."""
    if rate_in == rate_out:
        return samples
    g = math.gcd(rate_in, rate_out)
    orig, new = rate_in // g, rate_out // g
    kernel, width = _resample_kernel(orig, new), half_width(orig, new)
    num_out = -(-samples.numel() * new // orig)
    padded = torch.nn.functional.pad(samples[None, None], (width, width + orig))
    phases = torch.nn.functional.conv1d(padded, kernel, stride=orig)  # [1, new, n // orig + 1]
    return phases[0].t().reshape(-1)[:num_out].contiguous()


@functools.lru_cache(maxsize=8)
def mel_filterbank(rate: int, n_fft: int, mel_bins: int) -> torch.Tensor:
    """[mel_bins, n_fft // 2 + 1] float32: Slaney-scale triangles, each normalised to unit area in Hz."""
    mels = torch.linspace(_hz_to_mel(0.0), _hz_to_mel(rate / 2), mel_bins + 2, dtype=torch.float64)
    edges = torch.tensor([_mel_to_hz(float(m)) for m in mels], dtype=torch.float64)
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    weights = torch.minimum(rising, falling).clamp(min=0) * (2 / (hi - lo))
    return weights.to(torch.float32)


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


def log_mel(samples: torch.Tensor, rate: int, mel_bins: int) -> torch.Tensor:
    """[n] float32 at `rate` -> [ceil(n / hop), mel_bins] float32, normalised as in the module docstring."""
    win, hop = round(rate * 0.025), hop_length(rate)
    spec = torch.stft(
        samples,
        n_fft=win,
        hop_length=hop,
        window=torch.hann_window(win),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # [win // 2 + 1, 1 + n // hop]
    power = spec[:, : num_frames(samples.numel(), rate)].abs() ** 2
    mel = mel_filterbank(rate, win, mel_bins) @ power  # [mel_bins, frames]
    return ((mel.clamp(min=LOG_FLOOR).log10() + 4) / 4).t()


def stack_frames(mel: torch.Tensor, frames_per_token: int) -> torch.Tensor:
    """[frames, bins] -> [ceil(frames / k), k * bins] float16; a row is k consecutive frames, frame-major."""
    frames, bins = mel.shape
    num_tokens = -(-frames // frames_per_token)
    padded = torch.full((num_tokens * frames_per_token, bins), PAD_VALUE, dtype=torch.float32)
    padded[:frames] = mel
    return padded.reshape(num_tokens, frames_per_token * bins).to(torch.float16)
