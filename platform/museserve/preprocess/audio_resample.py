"""Band-limited polyphase resampling whose outputs are exact sums for 16-bit input, so resampling a
stream piece by piece gives the very bits of resampling the whole clip.

For input rate orig and output rate new (reduced by their gcd), output block k (outputs k * new to
k * new + new - 1) reads the inputs x[k * orig - width : k * orig + orig + width], zero outside the
signal: output k * new + p = sum_j taps[p, j] * x[k * orig - width + j], with the Kaiser-windowed
sinc of `audio_frames`.

Exactness: taps are rounded to multiples of 2^-TAP_FRACTION_BITS and a 16-bit sample is a multiple
of 2^-15, so every product is a multiple of 2^-42; a phase's sum |taps| is below MAX_TAP_MASS, so
every partial sum, in any order, is below 2^2 in magnitude: 44 significant bits, which float64
holds exactly. The float64 sum is thus the same whatever order BLAS adds in, and so is its
rounding to float32.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from museserve.preprocess.audio_frames import KAISER_BETA, cutoff, half_width, strided_rows

TAP_FRACTION_BITS = 27
MAX_TAP_MASS = 4.0
_ROW_VALUES = 1 << 17  # float64 values of the [groups, row_samples] buffer built at once


@dataclass(frozen=True, slots=True, eq=False)
class Polyphase:
    orig: int  # input samples per block
    new: int  # output samples per block
    width: int  # input samples a block reads before and after its own
    group: int  # blocks one matrix row computes; orig * group spans the filter, so rows overlap little
    matrix: np.ndarray  # [group * orig + 2 * width, group * new] float64: group window -> its outputs

    def window_samples(self, blocks: int) -> int:
        """Input samples that `blocks` consecutive blocks read."""
        return blocks * self.orig + 2 * self.width


@functools.lru_cache(maxsize=8)  # a kernel holds up to MAX_RESAMPLE_KERNEL float64 taps
def polyphase(rate_in: int, rate_out: int) -> Polyphase:
    g = math.gcd(rate_in, rate_out)
    orig, new = rate_in // g, rate_out // g
    width = half_width(orig, new)
    taps = _taps(orig, new, width)  # [new, orig + 2 * width]
    mass = float(np.abs(taps).sum(axis=1).max())
    if mass >= MAX_TAP_MASS:
        raise ValueError(f"resampling {rate_in} -> {rate_out} Hz: taps sum to {mass}; exact sums need < {MAX_TAP_MASS}")
    group = max(1, math.ceil(2 * width / orig))
    matrix = np.zeros((group * orig + 2 * width, group * new))
    for b in range(group):
        matrix[b * orig : b * orig + orig + 2 * width, b * new : (b + 1) * new] = taps.T
    matrix.setflags(write=False)  # cached and shared
    return Polyphase(orig, new, width, group, matrix)


def _taps(orig: int, new: int, width: int) -> np.ndarray:
    """[new, orig + 2 * width] float64, multiples of 2^-TAP_FRACTION_BITS; row p holds phase p's taps
    for input offsets -width .. orig + width - 1."""
    fc = cutoff(orig, new)
    offsets = np.arange(-width, orig + width, dtype=np.float64)
    t = np.arange(new, dtype=np.float64)[:, None] * orig / new - offsets[None, :]  # [new, taps]
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (t / width) ** 2, 0, None))) / np.i0(KAISER_BETA)
    window = np.where(np.abs(t) <= width, window, 0.0)
    taps = 2 * fc * np.sinc(2 * fc * t) * window
    return np.ldexp(np.round(np.ldexp(taps, TAP_FRACTION_BITS)), -TAP_FRACTION_BITS)


def resample_blocks(poly: Polyphase, samples: np.ndarray, blocks: int) -> np.ndarray:
    """Outputs of `blocks` consecutive blocks, [blocks * new] float32.

    `samples` is [poly.window_samples(blocks)]: from the first block's first input to the last
    block's last, zeros standing for samples outside the signal.
    """
    if len(samples) != poly.window_samples(blocks):
        raise ValueError(f"{blocks} blocks read {poly.window_samples(blocks)} samples, not {len(samples)}")
    span = poly.group * poly.orig  # input samples from one group's window to the next
    row_samples = poly.window_samples(poly.group)
    groups = -(-blocks // poly.group)
    out = np.empty((groups, poly.group * poly.new))
    whole = blocks // poly.group  # groups whose window lies inside `samples`
    step = max(1, _ROW_VALUES // row_samples)
    for first in range(0, whole, step):
        count = min(step, whole - first)
        window = np.ascontiguousarray(samples[first * span : (first + count - 1) * span + row_samples])
        rows = strided_rows(window, row_samples, span, count)  # [count, row_samples], overlapping
        out[first : first + count] = rows.astype(np.float64) @ poly.matrix
    if whole < groups:  # the last group, cut short: its missing blocks read zeros and are dropped
        tail = np.zeros(row_samples)
        rest = samples[whole * span :]
        tail[: len(rest)] = rest
        out[whole] = tail @ poly.matrix
    return out.reshape(-1)[: blocks * poly.new].astype(np.float32)


def resample_clip(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """[n] float32 -> [ceil(n * rate_out / rate_in)] float32; the very samples when the rates match."""
    if rate_in == rate_out:
        return samples
    poly = polyphase(rate_in, rate_out)
    blocks = len(samples) // poly.orig + 1  # the last block holds the clip's last outputs
    window = np.zeros(poly.window_samples(blocks), np.float32)
    window[poly.width : poly.width + len(samples)] = samples
    return resample_blocks(poly, window, blocks)[: -(-len(samples) * poly.new // poly.orig)]
