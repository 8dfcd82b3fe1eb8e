from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import grpc
import pytest

from museserve.serve.grpc_proxy import _CancelSafeRegistration, _pumped

SERVICE = "t.S"
STREAM_METHOD = f"/{SERVICE}/Stream"


@dataclass
class InnerRecord:
    """What the inner stream saw, written by the server side and read by the test."""

    yielded: list[bytes] = field(default_factory=list)
    cancelled: bool = False  # CancelledError while awaiting: the request reaches the replicas
    generator_exit: bool = False  # closed at a yield: the cancel is swallowed
    finally_ran: bool = False
    handler_returned: bool = False
    finally_before_return: bool | None = None


def ticking_stream(
    record: InnerRecord,
    count: int = 1000,
    interval_s: float = 0.01,
    fail_after: int | None = None,
    message: Callable[[int], bytes] = lambda i: b"x",
) -> Callable[[Any, Any], AsyncIterator[bytes]]:
    async def inner(request: bytes, context: Any) -> AsyncIterator[bytes]:
        try:
            for i in range(count):
                if fail_after is not None and i == fail_after:
                    raise RuntimeError("the model broke")
                await asyncio.sleep(interval_s)
                record.yielded.append(message(i))
                yield record.yielded[-1]
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        except GeneratorExit:
            record.generator_exit = True
            raise
        finally:
            record.finally_ran = True

    return inner


def numbered(i: int) -> bytes:
    return str(i).encode()


def recording_handler(record: InnerRecord, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Notes whether the inner stream's cleanup finished before the handler returned."""

    async def outer(request: bytes, context: Any) -> None:
        try:
            await handler(request, context)
        finally:
            record.finally_before_return = record.finally_ran
            record.handler_returned = True

    return outer


@asynccontextmanager
async def serve(handler: Callable[[Any, Any], Any]) -> AsyncIterator[grpc.aio.Channel]:
    """A real grpc.aio server on 127.0.0.1 serving `handler` as /t.S/Stream, and a channel to it."""
    server = grpc.aio.server()
    method = grpc.unary_stream_rpc_method_handler(handler)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Stream": method}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(grace=None)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def call(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall:
    return channel.unary_stream(STREAM_METHOD)(b"request", timeout=10)


# ---- _pumped on a real server ----


async def test_client_cancel_cancels_the_inner_stream_while_awaiting() -> None:
    record = InnerRecord()
    async with serve(recording_handler(record, _pumped(ticking_stream(record)))) as channel:
        rpc = call(channel)
        received = [await rpc.read() for _ in range(3)]
        assert received == [b"x", b"x", b"x"]
        rpc.cancel()

        assert await wait_for(lambda: record.handler_returned), "the handler never returned"
        assert record.cancelled, "the inner stream was not cancelled"
        assert not record.generator_exit
        assert record.finally_ran
        assert record.finally_before_return is True

        stopped_at = len(record.yielded)
        await asyncio.sleep(0.1)  # ten ticks of the inner stream
        assert len(record.yielded) == stopped_at
        assert stopped_at < 1000
    assert rpc.cancelled()


async def test_cancel_while_writes_are_blocked_by_flow_control() -> None:
    record = InnerRecord()
    big = 256 * 1024  # a few unread messages fill the HTTP/2 window, so writes block
    inner = ticking_stream(record, message=lambda i: b"y" * big)
    async with serve(recording_handler(record, _pumped(inner))) as channel:
        rpc = call(channel)
        for _ in range(3):
            assert len(await rpc.read()) == big
        assert await wait_for(lambda: len(record.yielded) >= 20)  # the client reads no further
        rpc.cancel()

        assert await wait_for(lambda: record.handler_returned), "the handler never returned"
        assert record.cancelled, "the inner stream was not cancelled"
        assert not record.generator_exit
        assert record.finally_before_return is True
        stopped_at = len(record.yielded)
        await asyncio.sleep(0.1)
        assert len(record.yielded) == stopped_at


async def test_repeated_cancels_each_stop_their_stream() -> None:
    records = [InnerRecord() for _ in range(5)]
    handlers = iter(records)

    async def handler(request: bytes, context: Any) -> None:
        record = next(handlers)
        await recording_handler(record, _pumped(ticking_stream(record)))(request, context)

    async with serve(handler) as channel:
        for i, record in enumerate(records):
            rpc = call(channel)
            for _ in range(i + 1):
                assert await rpc.read() == b"x"
            rpc.cancel()
            assert await wait_for(lambda r=record: r.handler_returned)
    assert all(r.cancelled and r.finally_ran and not r.generator_exit for r in records)


async def test_complete_stream_delivers_every_message_in_order() -> None:
    record = InnerRecord()
    async with serve(
        recording_handler(record, _pumped(ticking_stream(record, count=50, interval_s=0, message=numbered)))
    ) as channel:
        rpc = call(channel)
        received = [message async for message in rpc]
        assert received == [str(i).encode() for i in range(50)]
        assert await rpc.code() == grpc.StatusCode.OK
    assert record.finally_ran
    assert not record.cancelled
    assert record.finally_before_return is True


async def test_empty_stream_completes() -> None:
    record = InnerRecord()
    async with serve(_pumped(ticking_stream(record, count=0))) as channel:
        rpc = call(channel)
        assert [message async for message in rpc] == []
        assert await rpc.code() == grpc.StatusCode.OK


async def test_inner_error_reaches_the_client_after_its_messages() -> None:
    record = InnerRecord()
    handler = _pumped(ticking_stream(record, count=10, interval_s=0, fail_after=2, message=numbered))
    async with serve(recording_handler(record, handler)) as channel:
        rpc = call(channel)
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for message in rpc:
                received.append(message)
        assert received == [b"0", b"1"]
        assert info.value.code() != grpc.StatusCode.OK
        assert await rpc.code() == info.value.code()
    assert record.finally_ran
    assert record.handler_returned


async def test_a_plain_generator_handler_still_streams_through_the_registration() -> None:
    record = InnerRecord()
    server = grpc.aio.server()
    method = grpc.unary_stream_rpc_method_handler(ticking_stream(record))
    _CancelSafeRegistration(server).add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Stream": method}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            rpc = call(channel)
            assert [await rpc.read() for _ in range(3)] == [b"x"] * 3
            rpc.cancel()
            assert await wait_for(lambda: record.finally_ran)
            assert record.cancelled
            assert not record.generator_exit
    finally:
        await server.stop(grace=None)


# ---- _CancelSafeRegistration ----


class RecordingServer:
    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


class CallDetails(NamedTuple):
    method: str
    invocation_metadata: tuple = ()


def identity(x: bytes) -> bytes:
    return x


async def unary_stream_impl(request: Any, context: Any) -> AsyncIterator[bytes]:
    yield b"never run here"


async def unary_unary_impl(request: Any, context: Any) -> bytes:
    return b"ok"


async def stream_stream_impl(requests: Any, context: Any) -> AsyncIterator[bytes]:
    yield b"never run here"


def registered_handlers() -> tuple[RecordingServer, grpc.GenericRpcHandler, dict[str, grpc.RpcMethodHandler]]:
    originals = {
        "Stream": grpc.unary_stream_rpc_method_handler(
            unary_stream_impl, request_deserializer=identity, response_serializer=identity
        ),
        "Unary": grpc.unary_unary_rpc_method_handler(unary_unary_impl),
        "Bidi": grpc.stream_stream_rpc_method_handler(stream_stream_impl),
    }
    generic = grpc.method_handlers_generic_handler(SERVICE, originals)
    server = RecordingServer()
    _CancelSafeRegistration(server).add_generic_rpc_handlers([generic])
    return server, generic, originals


def test_registration_passes_the_handlers_to_the_server() -> None:
    server, generic, _ = registered_handlers()
    assert server.generic == [generic]


def test_unary_handlers_keep_their_shape_and_only_gain_the_replica_death_mapping() -> None:
    _, generic, originals = registered_handlers()
    wrapped = generic.service(CallDetails(f"/{SERVICE}/Unary"))  # see test_grpc_proxy_replica_death.py
    assert wrapped._replace(unary_unary=None) == originals["Unary"]._replace(unary_unary=None)
    assert asyncio.iscoroutinefunction(wrapped.unary_unary)


def test_streaming_request_handlers_are_passed_through_unchanged() -> None:
    _, generic, originals = registered_handlers()
    assert generic.service(CallDetails(f"/{SERVICE}/Bidi")) is originals["Bidi"]


def test_unary_stream_handlers_are_wrapped() -> None:
    _, generic, originals = registered_handlers()
    wrapped = generic.service(CallDetails(STREAM_METHOD))
    original = originals["Stream"]
    assert wrapped is not original
    assert wrapped.unary_stream is not original.unary_stream
    assert asyncio.iscoroutinefunction(wrapped.unary_stream)
    assert not wrapped.request_streaming and wrapped.response_streaming
    assert wrapped.request_deserializer(b"x") == b"x"  # wrapped only to refuse undecodable bytes (grpc_decode)
    assert wrapped.response_serializer is identity
    assert wrapped.unary_unary is None


def test_unknown_methods_still_route_to_nothing() -> None:
    _, generic, _ = registered_handlers()
    assert generic.service(CallDetails(f"/{SERVICE}/Missing")) is None


def test_registered_method_handlers_are_ignored() -> None:
    server = RecordingServer()
    registration = _CancelSafeRegistration(server)
    method = grpc.unary_stream_rpc_method_handler(unary_stream_impl)
    assert registration.add_registered_method_handlers(SERVICE, {"Stream": method}) is None
    assert server.generic == []
