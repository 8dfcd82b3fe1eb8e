"""Valid and corrupt WAV/FLAC clips built in memory, for the audio tests and the fuzz corpus.

`valid_clips()` spans rates, channel counts and sample encodings; `corrupt_clips()` holds
clips a server must refuse, each with a word its refusal message contains.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

RATES = (8_000, 16_000, 22_050, 44_100, 48_000)
WAV_SUBTYPES = ("PCM_U8", "PCM_16", "PCM_24", "FLOAT")  # 8/16/24-bit int and float32
FLAC_SUBTYPES = ("PCM_16", "PCM_24")


@dataclass(frozen=True)
class Clip:
    name: str
    data: bytes
    fmt: str  # "wav" or "flac", as a client declares it
    rate: int
    channels: int
    frames: int


@dataclass(frozen=True)
class BadClip:
    name: str
    data: bytes
    fmt: str  # what the client declares, which may not match the bytes
    reason: str  # a substring of the refusal message


def tone(freq_hz: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """[frames, channels] float32 sine; channel c is shifted by a quarter turn per channel."""
    t = np.arange(round(seconds * rate)) / rate
    cols = [amplitude * np.sin(2 * np.pi * freq_hz * t + c * np.pi / 2) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str = "wav", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt.upper(), subtype=subtype)
    return buf.getvalue()


def valid_clips(seconds: float = 0.25) -> list[Clip]:
    clips = []
    for rate in RATES:
        for channels in (1, 2):
            samples = tone(440.0, seconds, rate, channels)
            for fmt, subtypes in (("wav", WAV_SUBTYPES), ("flac", FLAC_SUBTYPES)):
                for subtype in subtypes:
                    name = f"{fmt}-{subtype}-{rate}hz-{channels}ch"
                    clips.append(Clip(name, encode(samples, rate, fmt, subtype), fmt, rate, channels, len(samples)))
    return clips


def wav_chunk_offset(data: bytes, chunk: bytes) -> int:
    """Offset of a RIFF chunk's 4-byte id."""
    pos = 12
    while data[pos : pos + 4] != chunk:
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    return pos


def patch_wav_fmt(data: bytes, *, channels: int | None = None, rate: int | None = None) -> bytes:
    """A WAV whose fmt chunk states other channels or rate (the data is left as it is)."""
    out, fmt = bytearray(data), wav_chunk_offset(data, b"fmt ") + 8
    if channels is not None:
        struct.pack_into("<H", out, fmt + 2, channels)
    if rate is not None:
        struct.pack_into("<I", out, fmt + 4, rate)
    return bytes(out)


def patch_wav_data_size(data: bytes, size: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<I", out, wav_chunk_offset(data, b"data") + 4, size)
    return bytes(out)


def patch_flac_total_samples(data: bytes, total: int) -> bytes:
    """A FLAC whose STREAMINFO states `total` samples (0: unknown). The 36-bit field ends at byte 26."""
    word = int.from_bytes(data[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | total
    return data[:18] + word.to_bytes(8, "big") + data[26:]


def flac_claiming(seconds: float, rate: int = 16_000) -> bytes:
    """A short valid FLAC stream whose header claims `seconds` of audio."""
    return patch_flac_total_samples(encode(tone(440.0, 0.1, rate), rate, "flac"), round(seconds * rate))


def float_wav_with(value: float, rate: int = 16_000) -> bytes:
    samples = tone(440.0, 0.1, rate)
    samples[len(samples) // 2, 0] = value
    return encode(samples, rate, "wav", "FLOAT")


def corrupt_clips() -> list[BadClip]:
    wav = encode(tone(440.0, 0.25, 16_000, 2), 16_000)
    flac = encode(tone(440.0, 0.25, 16_000, 2), 16_000, "flac")
    return [
        BadClip("zero-length", b"", "wav", "empty"),
        BadClip("wrong-magic-rifx", b"RIFX" + wav[4:], "wav", "not a WAV or FLAC"),
        BadClip("wrong-magic-id3", b"ID3\x04" + bytes(60), "flac", "not a WAV or FLAC"),
        BadClip("riff-not-wave", wav[:8] + b"AVI " + wav[12:], "wav", "not a WAV or FLAC"),
        BadClip("random-bytes", np.random.default_rng(0).bytes(4096), "wav", "not a WAV or FLAC"),
        BadClip("flac-declared-wav", flac, "wav", "declared"),
        BadClip("wav-declared-flac", wav, "flac", "declared"),
        BadClip("unknown-format", wav, "mp3", "not supported"),
        BadClip("wav-header-only", wav[:30], "wav", "data chunk"),
        BadClip("wav-truncated", wav[: len(wav) // 2], "wav", "truncated"),
        BadClip("wav-claims-10h", patch_wav_data_size(wav, 10 * 3600 * 16_000 * 4), "wav", "claims"),
        BadClip("wav-0-channels", patch_wav_fmt(wav, channels=0), "wav", "header"),
        BadClip("wav-65535-channels", patch_wav_fmt(wav, channels=65535), "wav", "header"),
        BadClip("wav-9-channels", encode(tone(440.0, 0.1, 16_000, 9), 16_000), "wav", "channels"),
        BadClip("wav-rate-0", patch_wav_fmt(wav, rate=0), "wav", "header"),
        BadClip("wav-rate-1hz", patch_wav_fmt(wav, rate=1), "wav", "sample rate"),
        BadClip("wav-rate-4ghz", patch_wav_fmt(wav, rate=4_000_000_000), "wav", "header"),
        BadClip("wav-odd-rate", encode(tone(440.0, 0.1, 44_101), 44_101), "wav", "resample"),
        BadClip("wav-no-samples", encode(np.zeros((0, 1), np.float32), 16_000), "wav", "no samples"),
        BadClip("wav-adpcm", encode(tone(440.0, 0.1, 16_000), 16_000, "wav", "IMA_ADPCM"), "wav", "encoding"),
        BadClip("wav-float-nan", float_wav_with(float("nan")), "wav", "non-finite"),
        BadClip("wav-float-inf", float_wav_with(float("-inf")), "wav", "non-finite"),
        BadClip("flac-header-only", flac[:42], "flac", "corrupt"),
        BadClip("flac-truncated", flac[: len(flac) // 2], "flac", "truncated"),
        BadClip("flac-claims-10h", flac_claiming(10 * 3600), "flac", "at most"),
        BadClip("flac-unknown-length", patch_flac_total_samples(flac, 0), "flac", "length"),
    ]
