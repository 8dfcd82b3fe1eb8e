"""A small gRPC client for ChatService, used by `museserve chat` and by the tests."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc

MODES = {"instant": pb.MODE_INSTANT, "thinking": pb.MODE_THINKING, "contemplating": pb.MODE_CONTEMPLATING}
AUDIO_FORMATS = {".wav": "wav", ".flac": "flac"}


def user_content(text: str, images: Sequence[Path] = (), audio: Sequence[Path] = ()) -> list[pb.ContentPart]:
    parts = [pb.ContentPart(text=text)]
    for path in images:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(pb.ContentPart(image=pb.Image(data=path.read_bytes(), mime_type=mime)))
    for path in audio:
        fmt = AUDIO_FORMATS.get(path.suffix.lower(), path.suffix.lstrip(".").lower())
        parts.append(pb.ContentPart(audio=pb.Audio(data=path.read_bytes(), format=fmt)))
    return parts


def build_request(
    text: str,
    *,
    system: str = "",
    model: str = "",
    mode: str = "instant",
    thinking_budget: int | None = None,
    max_output_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    images: Sequence[Path] = (),
    audio: Sequence[Path] = (),
) -> pb.ChatRequest:
    messages = []
    if system:
        messages.append(pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=system)]))
    messages.append(pb.Message(role=pb.ROLE_USER, content=user_content(text, images, audio)))
    sampling = pb.SamplingParams(stop=list(stop))
    if max_output_tokens is not None:
        sampling.max_output_tokens = max_output_tokens
    if temperature is not None:
        sampling.temperature = temperature
    if seed is not None:
        sampling.seed = seed
    mode_params = pb.ModeParams(mode=MODES[mode])
    if thinking_budget is not None:
        mode_params.thinking_budget = thinking_budget
    return pb.ChatRequest(model=model, messages=messages, sampling=sampling, mode=mode_params)


class ChatClient:
    """A blocking client; `metadata` carries identity (`x-api-key`, `x-user-id`)."""

    def __init__(self, address: str, metadata: Sequence[tuple[str, str]] = ()):
        self.channel = grpc.insecure_channel(address)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.metadata = tuple(metadata)

    def chat(self, request: pb.ChatRequest, timeout: float | None = None) -> pb.ChatResponse:
        return self.stub.Chat(request, timeout=timeout, metadata=self.metadata)

    def stream(self, request: pb.ChatRequest, timeout: float | None = None) -> Iterator[pb.ChatEvent]:
        return self.stub.ChatStream(request, timeout=timeout, metadata=self.metadata)

    def count_tokens(self, request: pb.ChatRequest, timeout: float | None = None) -> pb.CountTokensResponse:
        return self.stub.CountTokens(request, timeout=timeout, metadata=self.metadata)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
