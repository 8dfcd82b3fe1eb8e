"""Request bytes that do not parse are INVALID_ARGUMENT on a real grpc.aio server, for unary
and streaming methods, and for handlers that define every behavior (as Ray's proxy does)."""

from __future__ import annotations

import grpc
import pytest

from museserve.api.grpc_decode import TolerantDecoding, Undecodable, tolerant
from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc

NOT_UTF8 = pb.ChatRequest(model="@@@").SerializeToString().replace(b"@@@", b"\xed\xa0\x80")


class EchoModel(chat_pb2_grpc.ChatServiceServicer):
    async def Chat(self, request, context):
        assert not isinstance(request, Undecodable)
        return pb.ChatResponse(model=request.model)

    async def ChatStream(self, request, context):
        assert not isinstance(request, Undecodable)
        yield pb.ChatEvent(text_delta=request.model)


async def _serve(register) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _codes(address: str, wire: bytes) -> list[tuple[grpc.StatusCode, str]]:
    identity = lambda b: b  # noqa: E731
    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        for method in ("Chat", "ChatStream"):
            path = f"/museserve.v1.ChatService/{method}"
            make = channel.unary_unary if method == "Chat" else channel.unary_stream
            call = make(path, request_serializer=identity, response_deserializer=identity)(wire, timeout=10)
            try:
                if method == "Chat":
                    await call
                else:
                    [m async for m in call]
                out.append((grpc.StatusCode.OK, ""))
            except grpc.aio.AioRpcError as e:
                out.append((e.code(), e.details() or ""))
    return out


@pytest.mark.asyncio
async def test_bytes_that_are_not_utf8_are_invalid_argument_not_unknown():
    server, address = await _serve(
        lambda s: chat_pb2_grpc.add_ChatServiceServicer_to_server(EchoModel(), TolerantDecoding(s))
    )
    try:
        for code, details in await _codes(address, NOT_UTF8):
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in details
        good = pb.ChatRequest(model="m").SerializeToString()
        assert [c for c, _ in await _codes(address, good)] == [grpc.StatusCode.OK] * 2
    finally:
        await server.stop(None)


def test_the_streaming_flags_pick_the_behavior_to_wrap():
    def every(request, context):  # stands for Ray's handlers: all four behaviors set
        return None

    stream = grpc.unary_stream_rpc_method_handler(every, request_deserializer=pb.ChatRequest.FromString)
    stream = stream._replace(unary_unary=every)
    wrapped = tolerant(stream)
    assert wrapped.unary_stream is not every and wrapped.unary_unary is every
    assert isinstance(wrapped.request_deserializer(NOT_UTF8), Undecodable)
