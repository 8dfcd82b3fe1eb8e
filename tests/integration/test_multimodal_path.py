"""Images and audio through the whole path: gRPC proxy -> gateway -> preprocess (decode,
placeholders, segments) -> model pool (projectors, prefix cache) -> client."""

from __future__ import annotations

import pytest

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig
from museserve.preprocess.audio import load_audio
from museserve.preprocess.images import load_image
from museserve.v1 import chat_pb2 as pb
from tests.media_samples import png_bytes, wav_bytes

pytestmark = pytest.mark.integration


def with_image(text: str, png: bytes) -> pb.ChatRequest:
    request = build_request(text, temperature=0.0, max_output_tokens=8)
    request.messages[0].content.append(pb.ContentPart(image=pb.Image(data=png, mime_type="image/png")))
    return request


def with_audio(text: str, wav: bytes) -> pb.ChatRequest:
    request = build_request(text, temperature=0.0, max_output_tokens=8)
    request.messages[0].content.append(pb.ContentPart(audio=pb.Audio(data=wav, format="wav")))
    return request


def text_tokens(client: ChatClient, text: str) -> int:
    return client.count_tokens(build_request(text), timeout=30).prompt_tokens


def test_an_image_is_answered_and_its_tokens_are_prompt_tokens(client: ChatClient, app_config: MuseServeConfig):
    png = png_bytes(64, 48, seed=21)  # a few KiB: under the session's 64 KiB image limit
    image_tokens = load_image(png, "image/png", app_config.preprocess.media, "f").num_tokens
    assert image_tokens > 1
    request = with_image("what is in this picture?", png)
    response = client.chat(request, timeout=60)
    expected = text_tokens(client, "what is in this picture?") + image_tokens
    assert response.usage.prompt_tokens == expected == client.count_tokens(request, timeout=30).prompt_tokens
    assert response.usage.output_tokens >= 1
    assert response.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


def test_a_wav_clip_streams_an_answer_and_its_tokens_are_prompt_tokens(client: ChatClient, app_config: MuseServeConfig):
    wav = wav_bytes(0.5, 330.0)
    audio_tokens = load_audio(wav, "wav", app_config.preprocess.media, "f").num_tokens
    events = list(client.stream(with_audio("what do you hear?", wav), timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-2:] == ["usage", "finish"], kinds
    assert events[-2].usage.prompt_tokens == text_tokens(client, "what do you hear?") + audio_tokens
    assert events[-2].usage.output_tokens >= 1


def test_the_same_image_hits_the_prefix_cache_and_another_does_not(client: ChatClient):
    # 64 x 64 pixels in 16-pixel patches: 16 image tokens right after the role token, so the
    # first KV block already holds image tokens.
    text = "describe it"
    first = client.chat(with_image(text, png_bytes(64, 64, seed=31)), timeout=60)
    again = client.chat(with_image(text, png_bytes(64, 64, seed=31)), timeout=60)
    other = client.chat(with_image(text, png_bytes(64, 64, seed=32)), timeout=60)
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == other.usage.prompt_tokens
    assert again.usage.cached_tokens > 0
    assert other.usage.cached_tokens == 0
    assert again.text == first.text  # greedy, and the cached KV equals what was computed
