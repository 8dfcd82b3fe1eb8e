"""Audio clips (WAV or FLAC bytes) to rows of stacked log-mel frames, one row per token.

Every bound is checked before the samples are decoded: bytes, container, header (duration,
channels, rate, encoding) and the token count the clip will need. Decoding is then bounded by
the header's frame count, and every refusal is an `InvalidArgument` naming the client's field.

Features are log-mel frames (`audio_mel`) of the mono clip resampled to `audio_sample_rate`
(`audio_resample`); `audio_stream` computes the same rows from a live stream.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from museserve.config import MediaLimits
from museserve.errors import InvalidArgument
from museserve.preprocess.audio_frames import num_frames, rate_refusal
from museserve.preprocess.audio_mel import clip_log_mel, mel_spec, stack_frames
from museserve.preprocess.audio_resample import resample_clip

MAX_CHANNELS = 8
_ENCODINGS = {
    "wav": ({"WAV", "WAVEX"}, {"PCM_U8", "PCM_S8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"}),
    "flac": ({"FLAC"}, {"PCM_S8", "PCM_16", "PCM_24"}),
}
_DECODE_BLOCK = 1 << 16  # frames decoded at once; bounds the multichannel buffer


@dataclass(frozen=True, slots=True)
class AudioFeatures:
    rows: bytes  # float16, row-major [num_tokens, feature_dim]; feature_dim = mel_bins * frames_per_token
    num_tokens: int
    feature_dim: int
    seconds: float  # duration from the header: frames / sample rate
    digest: str  # sha256 of the resampled mono float32 (little-endian) samples


def load_audio(data: bytes, fmt: str, limits: MediaLimits, field: str) -> AudioFeatures:
    """Token rows of one clip; a frame starts every 10 ms and `frames_per_token` frames make a token."""
    if len(data) > limits.max_audio_bytes:
        raise InvalidArgument(f"audio is {len(data)} bytes; at most {limits.max_audio_bytes} are accepted", field=field)
    if fmt not in _ENCODINGS:
        raise InvalidArgument(f"audio format {fmt!r} is not supported; use 'wav' or 'flac'", field=field)
    _sniff(data, fmt, field)
    try:
        clip = sf.SoundFile(io.BytesIO(data))
    except Exception as e:  # libsndfile refuses the header; its reason is the only detail worth passing on
        raise InvalidArgument(f"cannot read the {fmt.upper()} header: {_reason(e)}", field=field) from None
    with clip:
        rate, frames = clip.samplerate, clip.frames
        _check_header(clip, fmt, limits, field)
        num_out = -(-frames * limits.audio_sample_rate // rate)
        num_tokens = -(-num_frames(num_out, limits.audio_sample_rate) // limits.audio_frames_per_token)
        if num_tokens > limits.max_request_media_tokens:
            raise InvalidArgument(
                f"audio needs {num_tokens} tokens; a request holds at most {limits.max_request_media_tokens}",
                field=field,
            )
        mono = _decode_mono(clip, fmt, field)
    return _features(mono, rate, frames, limits)


def _features(mono: np.ndarray, rate: int, frames: int, limits: MediaLimits) -> AudioFeatures:
    samples = resample_clip(mono, rate, limits.audio_sample_rate)  # [ceil(frames * out / rate)] float32
    digest = hashlib.sha256(samples.astype("<f4").tobytes()).hexdigest()
    mel = clip_log_mel(samples, mel_spec(limits.audio_sample_rate, limits.audio_mel_bins))  # [frames, mel_bins]
    rows = stack_frames(mel, limits.audio_frames_per_token)  # [num_tokens, feature_dim] float16
    return AudioFeatures(rows.tobytes(), rows.shape[0], rows.shape[1], frames / rate, digest)


def _sniff(data: bytes, fmt: str, field: str) -> None:
    if not data:
        raise InvalidArgument("audio clip is empty", field=field)
    found = "wav" if data[:4] == b"RIFF" and data[8:12] == b"WAVE" else "flac" if data[:4] == b"fLaC" else None
    if found is None:
        raise InvalidArgument("not a WAV or FLAC clip", field=field)
    if found != fmt:
        raise InvalidArgument(f"audio is declared {fmt!r} but the clip is {found.upper()}", field=field)
    if fmt == "wav":
        _check_wav_data_chunk(data, field)


def _check_wav_data_chunk(data: bytes, field: str) -> None:
    """libsndfile silently clips a data chunk that claims more bytes than follow; refuse it instead."""
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if chunk == b"data":
            if pos + 8 + size > len(data):
                raise InvalidArgument(
                    f"WAV data chunk claims {size} bytes but {len(data) - pos - 8} follow (truncated clip?)",
                    field=field,
                )
            return
        pos += 8 + size + (size & 1)  # chunks are padded to even length
    raise InvalidArgument("WAV clip has no complete data chunk (truncated clip?)", field=field)


def _check_header(clip: sf.SoundFile, fmt: str, limits: MediaLimits, field: str) -> None:
    containers, encodings = _ENCODINGS[fmt]
    if clip.format not in containers or clip.subtype not in encodings:
        raise InvalidArgument(f"{fmt.upper()} encoding {clip.subtype} is not supported", field=field)
    refusal = rate_refusal(clip.samplerate, limits.audio_sample_rate)
    if refusal is not None:
        raise InvalidArgument(refusal, field=field)
    if not 1 <= clip.channels <= MAX_CHANNELS:
        raise InvalidArgument(f"audio has {clip.channels} channels; at most {MAX_CHANNELS} are accepted", field=field)
    if clip.frames >= 1 << 62:  # libsndfile's "unknown" (a FLAC stream whose header omits its length)
        raise InvalidArgument(f"the {fmt.upper()} header does not state the clip's length", field=field)
    if clip.frames == 0:
        raise InvalidArgument("audio clip has no samples", field=field)
    seconds = clip.frames / clip.samplerate
    if seconds > limits.max_audio_seconds:
        raise InvalidArgument(
            f"audio is {seconds:.1f} s long; at most {limits.max_audio_seconds:g} s are accepted", field=field
        )


def _decode_mono(clip: sf.SoundFile, fmt: str, field: str) -> np.ndarray:
    """[frames] float32: the mean of the channels, clipped to [-1, 1] (the range of integer PCM)."""
    mono = np.empty(clip.frames, dtype=np.float32)
    done = 0
    try:
        while done < clip.frames:
            block = clip.read(min(_DECODE_BLOCK, clip.frames - done), dtype="float32", always_2d=True)
            if len(block) == 0:
                break
            mono[done : done + len(block)] = block.mean(axis=1)
            done += len(block)
    except Exception as e:
        raise InvalidArgument(f"{fmt.upper()} clip is corrupt or truncated: {_reason(e)}", field=field) from None
    if done != clip.frames:
        raise InvalidArgument(f"{fmt.upper()} clip ends after {done} of {clip.frames} frames", field=field)
    if not np.isfinite(mono).all():
        raise InvalidArgument("audio contains non-finite samples (NaN or infinity)", field=field)
    return np.clip(mono, -1.0, 1.0, out=mono)


def _reason(e: Exception) -> str:
    return getattr(e, "error_string", "") or type(e).__name__
