"""The arithmetic of audio tokens, without torch: frame counts and the resampling kernel's size,
so a clip's bounds are checked before any signal processing (`audio_dsp`) is loaded."""

from __future__ import annotations

import math


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
