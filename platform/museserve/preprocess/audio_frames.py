"""The arithmetic of audio tokens: accepted rates, frame counts and the resampling kernel's size,
so a clip's bounds are checked before any signal processing (`audio_resample`, `audio_mel`)."""

from __future__ import annotations

import math

import numpy as np

MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 96_000
MAX_RESAMPLE_KERNEL = 1 << 22  # taps of one polyphase kernel; rates with no small ratio are refused


def rate_refusal(rate: int, feature_rate: int) -> str | None:
    """Why audio at `rate` cannot become features at `feature_rate`; None when it can."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        return f"sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
    if resample_kernel_taps(rate, feature_rate) > MAX_RESAMPLE_KERNEL:
        return f"cannot resample {rate} Hz to {feature_rate} Hz; use a standard rate such as 16000, 44100 or 48000 Hz"
    return None


def num_frames(num_samples: int, rate: int) -> int:
    """Frame i is centred on sample i * hop; ceil(n / hop) frames cover n samples (16000 -> 100)."""
    return -(-num_samples // hop_length(rate))


def hop_length(rate: int) -> int:
    return round(rate * 0.010)


def resample_kernel_taps(rate_in: int, rate_out: int) -> int:
    """Size of the polyphase kernel `resample` builds (4 bytes a tap); large when the rates share no small ratio."""
    g = math.gcd(rate_in, rate_out)
    orig, new = rate_in // g, rate_out // g
    return new * (orig + 2 * half_width(orig, new))


# Band-limited resampling: a Kaiser-windowed sinc, low-pass at `ROLLOFF` of the lower Nyquist,
# `ZEROS` zero crossings each side. Polyphase: for input rate orig and output rate new (reduced
# by their gcd), output sample k * new + p reads input k * orig + m with tap h(p * orig / new - m),
# so one conv1d with stride orig and `new` output channels computes every phase.
ZEROS = 16
ROLLOFF = 0.94
KAISER_BETA = 8.6


def cutoff(orig: int, new: int) -> float:
    return 0.5 * ROLLOFF * min(1.0, new / orig)  # cycles per input sample


def half_width(orig: int, new: int) -> int:
    return math.ceil(ZEROS / (2 * cutoff(orig, new)))


def strided_rows(signal: np.ndarray, size: int, step: int, rows: int) -> np.ndarray:
    """[rows, size] read-only view of a contiguous 1-D array: row r is signal[r * step : r * step + size]."""
    assert signal.flags.c_contiguous and len(signal) >= (rows - 1) * step + size
    item = signal.itemsize
    return np.lib.stride_tricks.as_strided(signal, (rows, size), (step * item, item), writeable=False)
