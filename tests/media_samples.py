"""Small, valid media files built in memory for tests: PNG with Pillow, WAV with `wave`."""

from __future__ import annotations

import io
import math
import wave

import numpy as np
from PIL import Image

from museserve.config import MediaLimits

# Small media for unit tests. 8 px patches: a 32 x 40 image is 4 x 5 = 20 tokens of 192
# values; 0.2 s of audio is 20 frames of 10 ms, 4 to a token: 5 tokens of 16 x 4 = 64 values.
SMALL_MEDIA = MediaLimits(image_patch_size=8, audio_mel_bins=16, max_image_tokens=64, max_request_media_tokens=128)


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of random RGB noise: a different seed gives a different image of the same size."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, format="PNG")
    return out.getvalue()


def wav_bytes(seconds: float, frequency_hz: float = 440.0, rate: int = 16_000) -> bytes:
    """A mono 16-bit PCM WAV of a sine tone."""
    n = round(seconds * rate)
    samples = (0.5 * 32767 * np.sin(2 * math.pi * frequency_hz * np.arange(n) / rate)).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(samples.tobytes())
    return out.getvalue()
