"""ChatStream over gRPC (grpc.aio): plaintext or TLS, `authorization: Bearer` metadata."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from museserve.client import MODES
from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc

from .plan import RequestSpec
from .records import Clock, Sample


def to_proto(spec: RequestSpec) -> pb.ChatRequest:
    parts = [pb.ContentPart(text=spec.prompt)]
    parts += [pb.ContentPart(image=pb.Image(data=png, mime_type="image/png")) for png in spec.images]
    parts += [pb.ContentPart(audio=pb.Audio(data=wav, format="wav")) for wav in spec.audio]
    sampling = pb.SamplingParams(max_output_tokens=spec.max_output_tokens)
    if spec.temperature is not None:
        sampling.temperature = spec.temperature
    mode = pb.ModeParams(mode=MODES[spec.mode])
    if spec.thinking_budget is not None:
        mode.thinking_budget = spec.thinking_budget
    if spec.num_agents is not None:
        mode.num_agents = spec.num_agents
    message = pb.Message(role=pb.ROLE_USER, content=parts)
    return pb.ChatRequest(model=spec.model, messages=[message], sampling=sampling, mode=mode)


class GrpcTransport:
    def __init__(
        self, address: str, *, tls: bool = False, ca_file: Path | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ):  # fmt: skip
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        if tls or ca_file is not None:
            root = ca_file.read_bytes() if ca_file is not None else None
            self.channel = grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root), options=options)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.metadata = tuple(metadata)

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None:
        metadata = [*self.metadata, ("x-user-id", spec.user)]
        if spec.api_key:
            metadata.append(("authorization", f"Bearer {spec.api_key}"))
        call = self.stub.ChatStream(to_proto(spec), metadata=metadata, timeout=timeout_s)
        try:
            async for event in call:
                kind = event.WhichOneof("event")
                if kind in ("text_delta", "reasoning_delta"):
                    sample.token_times.append(clock())
                elif kind == "usage":
                    u = event.usage
                    sample.input_tokens, sample.cached_tokens = u.prompt_tokens, u.cached_tokens
                    sample.output_tokens, sample.reasoning_tokens = u.output_tokens, u.reasoning_tokens
            sample.status = "OK"
        except grpc.aio.AioRpcError as e:
            sample.status, sample.error = e.code().name, e.details() or ""
        finally:
            call.cancel()  # a no-op once finished; frees the server's work if we were cancelled

    async def close(self) -> None:
        await self.channel.close()
