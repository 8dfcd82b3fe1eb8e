"""ChatStream over gRPC (grpc.aio): plaintext or TLS, `authorization: Bearer` metadata, retries
before the first event as `museserve.client.RetryPolicy` says; and Converse calls opened for
voice sessions (voice_session.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from museserve.client import MODES, NO_RETRY, RetryPolicy, next_attempt_delay_s
from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc

from .plan import RequestSpec
from .records import Clock, Sample

ROLES = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}


def _messages(spec: RequestSpec) -> list[pb.Message]:
    if spec.messages:
        return [pb.Message(role=ROLES[m.role], content=[pb.ContentPart(text=m.text)]) for m in spec.messages]
    parts = [pb.ContentPart(text=spec.prompt)]
    parts += [pb.ContentPart(image=pb.Image(data=png, mime_type="image/png")) for png in spec.images]
    parts += [pb.ContentPart(audio=pb.Audio(data=wav, format="wav")) for wav in spec.audio]
    return [pb.Message(role=pb.ROLE_USER, content=parts)]


def to_proto(spec: RequestSpec) -> pb.ChatRequest:
    sampling = pb.SamplingParams(max_output_tokens=spec.max_output_tokens)
    if spec.temperature is not None:
        sampling.temperature = spec.temperature
    mode = pb.ModeParams(mode=MODES[spec.mode])
    if spec.thinking_budget is not None:
        mode.thinking_budget = spec.thinking_budget
    if spec.num_agents is not None:
        mode.num_agents = spec.num_agents
    return pb.ChatRequest(model=spec.model, messages=_messages(spec), sampling=sampling, mode=mode)


def record_chat_event(sample: Sample, event: pb.ChatEvent, at: float) -> bool:
    """Records a ChatStream event (or a Converse answer's) that arrived at `at`: a token time
    per content event, the answer text, the usage counts. True for the finish event."""
    kind = event.WhichOneof("event")
    if kind in ("text_delta", "reasoning_delta"):
        sample.token_times.append(at)
        if kind == "text_delta" and sample.answer_parts is not None:
            sample.answer_parts.append(event.text_delta)
    elif kind == "usage":
        u = event.usage
        sample.input_tokens, sample.cached_tokens = u.prompt_tokens, u.cached_tokens
        sample.output_tokens, sample.reasoning_tokens = u.output_tokens, u.reasoning_tokens
    return kind == "finish"


class GrpcTransport:
    """`channels` > 1 opens that many connections and sends round-robin over them, as a
    fleet of clients would: a server that spreads connections (SO_REUSEPORT, an L4 load
    balancer) then spreads the load. `retry`: how a stream that failed before its first
    event is sent again (the default, `NO_RETRY`, records every refusal as it came)."""

    def __init__(
        self, address: str, *, tls: bool = False, ca_file: Path | None = None,
        metadata: Sequence[tuple[str, str]] = (), channels: int = 1, retry: RetryPolicy = NO_RETRY,
    ):  # fmt: skip
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        if channels > 1:
            options.append(("grpc.use_local_subchannel_pool", 1))  # else equal channels share one connection
        root = ca_file.read_bytes() if ca_file is not None else None
        credentials = grpc.ssl_channel_credentials(root) if tls or ca_file is not None else None
        self.channels = [
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
            for _ in range(channels)
        ]
        self.stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in self.channels]
        self.metadata = tuple(metadata)
        self.retry = retry
        self._next = itertools.count()

    def _call_metadata(self, user: str, api_key: str | None) -> list[tuple[str, str]]:
        metadata = [*self.metadata, ("x-user-id", user)]
        if api_key:
            metadata.append(("authorization", f"Bearer {api_key}"))
        return metadata

    def converse(self, user: str, api_key: str | None) -> grpc.aio.StreamStreamCall:
        """Opens a Converse call on the next channel, with no deadline (a voice session bounds
        each turn itself). Never retried: speech already sent cannot be taken back."""
        stub = self.stubs[next(self._next) % len(self.stubs)]
        return stub.Converse(metadata=self._call_metadata(user, api_key))

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None:
        metadata = self._call_metadata(spec.user, spec.api_key)
        request = to_proto(spec)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s  # of every attempt together
        for attempt in itertools.count(1):
            error, received = await self._stream(request, metadata, sample, clock, deadline)
            if error is None:
                return
            sample.status, sample.error = error.code().name, error.details() or ""
            delay = next_attempt_delay_s(self.retry, error, attempt, received, deadline)
            if delay is None:
                return
            sample.retries += 1
            await asyncio.sleep(delay)

    async def _stream(
        self, request: pb.ChatRequest, metadata: list[tuple[str, str]], sample: Sample, clock: Clock,
        deadline: float | None,
    ) -> tuple[grpc.aio.AioRpcError | None, bool]:  # fmt: skip
        """One attempt: the error it ended with (None: it ended OK, status set) and whether
        any event had arrived."""
        stub = self.stubs[next(self._next) % len(self.stubs)]
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        call = stub.ChatStream(request, metadata=metadata, timeout=timeout)
        finished = received = False
        try:
            async for event in call:
                received = True
                finished = record_chat_event(sample, event, clock()) or finished
            # A stream that ends OK without its finish event was cut short somewhere.
            sample.status = "OK" if finished else "STREAM_TRUNCATED"
            return None, received
        except grpc.aio.AioRpcError as e:
            return e, received
        finally:
            call.cancel()  # a no-op once finished; frees the server's work if we were cancelled

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
