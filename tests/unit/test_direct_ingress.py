"""The gateway's direct gRPC server without Ray: a real grpc.aio server and client over a
`Gateway` whose pool is a scripted async generator that records how each stream ended."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from museserve.api.grpc_api import GrpcChatApi
from museserve.client import build_request
from museserve.config import parse_config
from museserve.domain import FinishReason, Usage
from museserve.gateway.gateway import Gateway
from museserve.gateway.observer import CountingObserver
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.serve.direct_ingress import DirectGrpcIngress
from museserve.v1 import chat_pb2_grpc
from tests.support import text_preprocess

LIMITS = {"requests_per_minute": 1, "request_burst": 2}


class Pool:
    """`tokens` one-token chunks, `delay_s` apart; counts streams that ended unfinished."""

    def __init__(self, tokens: int, delay_s: float):
        self.tokens, self.delay_s = tokens, delay_s
        self.started = self.abandoned = 0

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.started += 1
        finished = False
        try:
            for i in range(self.tokens):
                await asyncio.sleep(self.delay_s)
                yield GenerationChunk(text=f"t{i} ", num_new_tokens=1)
            finished = True
            yield GenerationChunk(finish=FinishReason.STOP, usage=Usage(output_tokens=self.tokens))
        finally:
            self.abandoned += not finished


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingress(
    pool: Pool,
    port: int,
    *,
    grace_s: float = 5.0,
    timeout_s: float = 30.0,
    limits: dict | None = None,
    observer: CountingObserver | None = None,
) -> DirectGrpcIngress:
    tiers = {"default": {"tenant": limits}} if limits else {"default": {}}
    config = parse_config({"pools": [{"name": "main"}], "gateway": {"tiers": tiers}}, source="test")
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    gateway = Gateway(
        config, text_preprocess(config), {"main": pool}, quota=quota, observer=observer or CountingObserver()
    )
    return DirectGrpcIngress(
        GrpcChatApi(gateway),
        host="127.0.0.1",
        port=port,
        max_message_bytes=1 << 20,
        request_timeout_s=timeout_s,
        grace_s=grace_s,
    )


@asynccontextmanager
async def serving(server: DirectGrpcIngress) -> AsyncIterator[DirectGrpcIngress]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_every_cancel_after_the_first_token_ends_the_pool_stream() -> None:
    pool, port, observer = Pool(tokens=1000, delay_s=0.002), free_port(), CountingObserver()
    async with (
        serving(ingress(pool, port, observer=observer)),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for _ in range(20):
            call = stub.ChatStream(build_request("hi"))
            await call.read()
            call.cancel()
        await until(lambda: pool.abandoned == 20)
        await until(lambda: observer.requests["grpc", "CANCELLED"] == 20)
    assert pool.started == 20


async def test_a_rate_limited_stream_carries_retry_info() -> None:
    port, observer = free_port(), CountingObserver()
    server = ingress(Pool(tokens=1, delay_s=0), port, limits=LIMITS, observer=observer)
    async with serving(server), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for _ in range(LIMITS["request_burst"]):
            await stub.Chat(build_request("hi"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stub.ChatStream(build_request("hi")):
                pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit" in caught.value.details()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(caught.value).details)
    assert observer.requests == {("grpc", "OK"): LIMITS["request_burst"], ("grpc", "RESOURCE_EXHAUSTED"): 1}


async def test_a_call_past_the_server_limit_is_deadline_exceeded_and_ends_the_pool_stream() -> None:
    pool, port = Pool(tokens=1000, delay_s=0.01), free_port()
    async with serving(ingress(pool, port, timeout_s=0.3)), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await chat_pb2_grpc.ChatServiceStub(channel).Chat(build_request("hi"))
        await until(lambda: pool.abandoned == 1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_replicas_share_the_port_and_a_port_held_without_reuse_fails_start() -> None:
    port = free_port()
    first, second = ingress(Pool(1, 0), port), ingress(Pool(1, 0), port)
    async with serving(second):
        await first.start()
        await first.stop()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await chat_pb2_grpc.ChatServiceStub(channel).Chat(build_request("hi"))
        assert reply.usage.output_tokens == 1
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(RuntimeError, match="cannot bind"):
            await ingress(Pool(1, 0), held.getsockname()[1]).start()


async def test_stop_lets_a_stream_in_flight_finish_and_refuses_new_calls() -> None:
    pool, port = Pool(tokens=20, delay_s=0.02), free_port()
    server = ingress(pool, port, grace_s=5.0)
    async with serving(server), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        call = chat_pb2_grpc.ChatServiceStub(channel).ChatStream(build_request("hi"))
        events = [await call.read()]
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest())
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
        await stopping
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert [e.WhichOneof("event") for e in events[-2:]] == ["usage", "finish"]
    assert sum(e.text_delta != "" for e in events) == 20 and pool.abandoned == 0


async def test_stop_cancels_a_stream_past_the_grace_period() -> None:
    pool, port = Pool(tokens=1000, delay_s=0.01), free_port()
    server = ingress(pool, port, grace_s=0.1)
    async with serving(server), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).ChatStream(build_request("hi"))
        await call.read()
        await server.stop()
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            while await call.read() is not grpc.aio.EOF:
                pass
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE  # the client may retry it
        await until(lambda: pool.abandoned == 1)
