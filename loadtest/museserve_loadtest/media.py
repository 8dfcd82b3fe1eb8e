"""Synthetic media for multimodal workloads: PNG noise images (Pillow) and WAV tones (soundfile).

Media are made once per distinct size and cached for the run (`MediaCache`), so a run of
thousands of image requests encodes a handful of files; the bytes are real, decodable files.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from PIL import Image


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """RGB noise: it compresses badly, so the size on the wire is close to width * height * 3."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def wav_bytes(seconds: float, sample_rate: int = 16_000, frequency_hz: float = 440.0) -> bytes:
    """A mono 16-bit PCM sine tone."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    samples = (0.5 * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, samples, sample_rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


class MediaCache:
    """Encoded media by parameters, made on first use; lives for one run."""

    def __init__(self) -> None:
        self._items: dict[tuple, bytes] = {}

    def png(self, width: int, height: int, seed: int = 0) -> bytes:
        key = ("png", width, height, seed)
        if key not in self._items:
            self._items[key] = png_bytes(width, height, seed)
        return self._items[key]

    def wav(self, seconds: float, sample_rate: int) -> bytes:
        key = ("wav", seconds, sample_rate)
        if key not in self._items:
            self._items[key] = wav_bytes(seconds, sample_rate)
        return self._items[key]

    def __len__(self) -> int:
        return len(self._items)
