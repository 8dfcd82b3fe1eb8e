"""Retries against a real grpc.aio server on a loopback port that refuses its first calls with
UNAVAILABLE (the gateway's own status and RetryInfo trailer) and then answers: the Python
client and the load tester's transport send again and succeed, and never once output began."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from museserve.api.grpc_status import to_grpc_status
from museserve.client import ChatClient, RetryPolicy, build_request
from museserve.errors import Cancelled, MuseError, ResourceExhausted, Unavailable
from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc
from museserve_loadtest.grpc_transport import GrpcTransport
from museserve_loadtest.plan import RequestSpec
from museserve_loadtest.records import Sample

QUICK = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05, jitter=0.5)


class FlakyChat(chat_pb2_grpc.ChatServiceServicer):
    """Fails its first `failures` calls with `error` before any output (or, with
    `mid_stream`, after the first event of every stream), then answers "hello"; a stream
    first waits `pause_s`."""

    def __init__(self, failures: int, error: MuseError | None = None, mid_stream: bool = False, pause_s: float = 0):
        self.failures, self.mid_stream, self.pause_s = failures, mid_stream, pause_s
        self.error = error or Unavailable("this gateway replica is shutting down", retry_after_s=0.02)
        self.calls = 0

    async def _fail(self, context: grpc.aio.ServicerContext) -> None:
        status = to_grpc_status(self.error, "rid")
        await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)

    async def Chat(self, request: pb.ChatRequest, context: grpc.aio.ServicerContext) -> pb.ChatResponse:
        self.calls += 1
        if self.calls <= self.failures:
            await self._fail(context)
        return pb.ChatResponse(text="hello")

    async def ChatStream(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatEvent]:
        self.calls += 1
        await asyncio.sleep(self.pause_s)
        if self.mid_stream:
            yield pb.ChatEvent(text_delta="hel")
        if self.calls <= self.failures:
            await self._fail(context)
        yield pb.ChatEvent(text_delta="hello")
        yield pb.ChatEvent(usage=pb.Usage(prompt_tokens=3, output_tokens=1))
        yield pb.ChatEvent(finish=pb.Finish(reason=pb.FINISH_REASON_STOP, model="m"))


async def serve(service: FlakyChat) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def blocking_client(address: str, policy: RetryPolicy):
    """The blocking client, run off the loop that serves."""
    client = ChatClient(address, retry=policy)

    async def call(method: str, *args, **kwargs):
        return await asyncio.to_thread(getattr(client, method), *args, **kwargs)

    return client, call


async def test_the_client_retries_unavailable_and_succeeds():
    service = FlakyChat(failures=2)
    server, address = await serve(service)
    client, call = blocking_client(address, QUICK)
    try:
        started = time.monotonic()
        reply = await call("chat", build_request("hi"), timeout=10)
        assert reply.text == "hello" and service.calls == 3
        assert time.monotonic() - started >= 2 * 0.02  # the server's RetryInfo delay, each time

        service.calls = 0
        stream = client.stream(build_request("hi"), timeout=10)
        events = await asyncio.to_thread(list, stream)
        assert [e.WhichOneof("event") for e in events] == ["text_delta", "usage", "finish"]
        assert service.calls == 3 and stream.retries == 2
    finally:
        client.close()
        await server.stop(None)


async def test_attempts_are_bounded_and_the_last_error_stands():
    service = FlakyChat(failures=10)
    server, address = await serve(service)
    client, call = blocking_client(address, RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            await call("chat", build_request("hi"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and service.calls == 3
    finally:
        client.close()
        await server.stop(None)


async def test_a_stream_that_began_is_not_sent_again_nor_is_a_rate_limit():
    for service in (FlakyChat(failures=1, mid_stream=True), FlakyChat(failures=1, error=ResourceExhausted("limit"))):
        server, address = await serve(service)
        client = ChatClient(address, retry=QUICK)
        try:
            stream = client.stream(build_request("hi"), timeout=10)
            with pytest.raises(grpc.RpcError) as caught:
                await asyncio.to_thread(list, stream)
            assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert service.calls == 1 and stream.retries == 0
        finally:
            client.close()
            await server.stop(None)


async def test_the_load_tester_retries_counts_the_retries_and_keeps_the_stream():
    service = FlakyChat(failures=2)
    server, address = await serve(service)
    spec = RequestSpec(index=0, prompt="hi", max_output_tokens=4)
    loop = asyncio.get_running_loop()
    try:
        for policy, status, retries, calls in ((QUICK, "OK", 2, 3), (RetryPolicy(max_attempts=1), "UNAVAILABLE", 0, 1)):
            service.calls = 0
            transport = GrpcTransport(address, retry=policy)
            sample = Sample(0, 0.0)
            await transport.send(spec, sample, loop.time, timeout_s=10)
            await transport.close()
            assert (sample.status, sample.retries, service.calls) == (status, retries, calls)
        assert sample.token_times == [] and sample.error == "this gateway replica is shutting down"
    finally:
        await server.stop(None)


async def test_a_cancelled_before_output_is_retried_unless_the_caller_cancelled():
    """grpc's server shutdown answers a stream that raced its GOAWAY with CANCELLED."""
    service = FlakyChat(failures=1, error=Cancelled("the server is stopping"))
    server, address = await serve(service)
    client = ChatClient(address, retry=QUICK)
    try:
        stream = client.stream(build_request("hi"), timeout=10)
        assert len(await asyncio.to_thread(list, stream)) == 3 and stream.retries == 1

        service.calls, service.pause_s = 0, 0.5
        stream = client.stream(build_request("hi"), timeout=10)
        stream.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            await asyncio.to_thread(next, stream)
        assert caught.value.code() == grpc.StatusCode.CANCELLED and stream.retries == 0
    finally:
        client.close()
        await server.stop(None)
