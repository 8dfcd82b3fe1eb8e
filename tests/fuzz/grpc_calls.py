"""Calling ChatService for the fuzz tests and checking what comes back: one status per
call, never a server fault, never server internals in what the client reads."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc
from tests.integration.conftest import TEST_KEY

AUTH = (("authorization", f"Bearer {TEST_KEY}"), ("x-user-id", "fuzzer"))
FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
LEAKS = ("Traceback", "/site-packages/", '.py"')
STREAM_EVENTS_READ = 3


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]
    error: grpc.RpcError | None = None

    def violation_fields(self) -> list[str]:
        """The fields a BadRequest detail names (INVALID_ARGUMENT), empty if none."""
        status = rpc_status.from_call(self.error) if self.error is not None else None
        fields = []
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [v.field for v in bad.field_violations]
        return fields


@functools.cache
def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])


def stub(address: str) -> chat_pb2_grpc.ChatServiceStub:
    return chat_pb2_grpc.ChatServiceStub(channel(address))


def call(address: str, method: str, request: pb.ChatRequest, metadata=AUTH, timeout: float = 5.0) -> Outcome:
    """Chat, CountTokens, or ChatStream (a few events read, then cancelled)."""
    s = stub(address)
    try:
        if method == "ChatStream":
            events = s.ChatStream(request, timeout=timeout, metadata=metadata)
            for i, _ in enumerate(events):
                if i + 1 >= STREAM_EVENTS_READ:
                    events.cancel()
                    break
            return Outcome(grpc.StatusCode.OK, "", ())
        unary = s.Chat if method == "Chat" else s.CountTokens
        _, rpc = unary.with_call(request, timeout=timeout, metadata=metadata)
        return Outcome(rpc.code(), rpc.details() or "", tuple(rpc.trailing_metadata() or ()))
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()), e)


def assert_not_a_fault(outcome: Outcome, sent: str = "") -> None:
    """`sent`: the request as text; a message may quote what the client sent, so a "leak"
    that the client wrote itself is not one."""
    assert outcome.code not in FAULTS, f"{outcome.code.name}: {outcome.details}"
    shown = [outcome.details] + [v for _, v in outcome.trailers if isinstance(v, str)]
    shown += [v.decode("utf-8", "replace") for _, v in outcome.trailers if isinstance(v, bytes)]
    for text in shown:
        for leak in LEAKS:
            assert leak not in text or leak in sent, f"{outcome.code.name} leaks {leak!r}: {text[:500]}"


def assert_healthy(address: str) -> None:
    reply = health_pb2_grpc.HealthStub(channel(address)).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def call_raw(address: str, method: str, wire: bytes, metadata=AUTH, timeout: float = 5.0) -> Outcome:
    """Sends bytes as they are, for requests protobuf itself would not build."""
    path = f"/museserve.v1.ChatService/{method}"
    identity = lambda b: b  # noqa: E731
    try:
        if method == "ChatStream":
            events = channel(address).unary_stream(path, request_serializer=identity, response_deserializer=identity)
            for i, _ in enumerate(events(wire, timeout=timeout, metadata=metadata)):
                if i + 1 >= STREAM_EVENTS_READ:
                    break
            return Outcome(grpc.StatusCode.OK, "", ())
        unary = channel(address).unary_unary(path, request_serializer=identity, response_deserializer=identity)
        _, rpc = unary.with_call(wire, timeout=timeout, metadata=metadata)
        return Outcome(rpc.code(), rpc.details() or "", tuple(rpc.trailing_metadata() or ()))
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()), e)
