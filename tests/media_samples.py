"""Small, valid media files built in memory for tests: PNG noise (the load-test tool's), WAV
with `wave`."""

from __future__ import annotations

import io
import math
import wave

import numpy as np

from museserve.config import MediaLimits
from museserve_loadtest.media import png_bytes  # noqa: F401  (re-exported for tests)

# Small media for unit tests. 8 px patches: a 32 x 40 image is 4 x 5 = 20 tokens of 192
# values; 0.2 s of audio is 20 frames of 10 ms, 4 to a token: 5 tokens of 16 x 4 = 64 values.
SMALL_MEDIA = MediaLimits(image_patch_size=8, audio_mel_bins=16, max_image_tokens=64, max_request_media_tokens=128)


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
