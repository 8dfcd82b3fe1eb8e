"""Every hostile image and audio clip of the corpora, and seeded random mutations of valid
files, through the real gRPC API: refused with INVALID_ARGUMENT naming the content part
(a mutation may also still decode: then it is served), never a server fault."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from museserve.v1 import chat_pb2 as pb
from tests import audio_corpus, media_corpus
from tests.fuzz.conftest import fuzz_cases
from tests.fuzz.grpc_calls import Outcome, assert_healthy, assert_not_a_fault, call

pytestmark = pytest.mark.integration

PART = "messages[0].content[1]"
BAD_IMAGES = {name: data for name, (data, ok) in media_corpus.corpus().items() if not ok}
BAD_CLIPS = {clip.name: clip for clip in audio_corpus.corrupt_clips()}


def _mime(name: str) -> str:
    for prefix, mime in (("jpeg", "image/jpeg"), ("webp", "image/webp"), ("gif", "image/gif"), ("bmp", "image/bmp")):
        if name.startswith(prefix):
            return mime
    return "image/png"


def _request(part: pb.ContentPart) -> pb.ChatRequest:
    message = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="what is this?"), part])
    return pb.ChatRequest(messages=[message], sampling=pb.SamplingParams(max_output_tokens=1, temperature=0.0))


def _image(data: bytes, mime: str) -> pb.ContentPart:
    return pb.ContentPart(image=pb.Image(data=data, mime_type=mime))


def _audio(data: bytes, fmt: str) -> pb.ContentPart:
    return pb.ContentPart(audio=pb.Audio(data=data, format=fmt))


def _assert_refused_naming_the_part(outcome: Outcome) -> None:
    assert_not_a_fault(outcome)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)
    fields = outcome.violation_fields()
    assert fields and all(f.startswith(PART) for f in fields), (fields, outcome.details)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
@pytest.mark.parametrize("method", ["Chat", "CountTokens"])
def test_every_hostile_image_is_refused_naming_the_part(grpc_address: str, name: str, method: str):
    outcome = call(grpc_address, method, _request(_image(BAD_IMAGES[name], _mime(name))), timeout=30)
    _assert_refused_naming_the_part(outcome)


@pytest.mark.parametrize("name", sorted(BAD_CLIPS))
@pytest.mark.parametrize("method", ["Chat", "CountTokens"])
def test_every_corrupt_clip_is_refused_naming_the_part_and_why(direct_grpc_address: str, name: str, method: str):
    clip = BAD_CLIPS[name]
    outcome = call(direct_grpc_address, method, _request(_audio(clip.data, clip.fmt)), timeout=30)
    _assert_refused_naming_the_part(outcome)
    assert clip.reason.lower() in outcome.details.lower(), outcome.details


def _valid_files() -> list[tuple[str, pb.ContentPart]]:
    wav = audio_corpus.encode(audio_corpus.tone(440.0, 0.25, 16_000), 16_000)
    flac = audio_corpus.encode(audio_corpus.tone(440.0, 0.25, 16_000, 2), 16_000, "flac")
    return [
        ("png", _image(media_corpus.png(), "image/png")),
        ("jpeg", _image(media_corpus.jpeg(), "image/jpeg")),
        ("webp", _image(media_corpus.webp(), "image/webp")),
        ("apng", _image(media_corpus.animated("PNG"), "image/png")),
        ("wav", _audio(wav, "wav")),
        ("flac", _audio(flac, "flac")),
    ]


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flipped bytes, a cut, a repeated slice, a zeroed run; mostly in the header,
    where parsers decide how much to allocate."""
    out = bytearray(data)
    kind = rng.integers(4)
    at = int(rng.integers(0, min(len(out), 64) if rng.random() < 0.6 else len(out)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, min(len(out), at + 64)))
            out[i] = int(rng.integers(256))
    elif kind == 1:
        del out[at:]
    elif kind == 2:
        out[at:at] = out[at : at + int(rng.integers(1, 512))] * int(rng.integers(2, 8))
    else:
        out[at : at + int(rng.integers(1, 32))] = bytes(min(32, len(out) - at))
    return bytes(out)


MUTATIONS_PER_FILE = max(4, fuzz_cases(0.1) // 6)


@pytest.mark.parametrize(("kind", "part"), _valid_files(), ids=[k for k, _ in _valid_files()])
def test_seeded_mutations_of_valid_files_are_served_or_refused_naming_the_part(
    grpc_address: str, direct_grpc_address: str, kind: str, part: pb.ContentPart
):
    rng = np.random.default_rng(sum(kind.encode()))
    field = "image" if part.HasField("image") else "audio"
    for i in range(MUTATIONS_PER_FILE):
        mutated = pb.ContentPart()
        mutated.CopyFrom(part)
        media = getattr(mutated, field)
        media.data = _mutate(media.data, rng)
        address = direct_grpc_address if i % 2 else grpc_address
        outcome = call(address, "CountTokens" if i % 3 else "Chat", _request(mutated), timeout=30)
        if outcome.code != grpc.StatusCode.OK:
            _assert_refused_naming_the_part(outcome)
    assert_healthy(grpc_address)
    assert_healthy(direct_grpc_address)
