"""Ray's proxy answers INTERNAL when the gateway replica it called died, and NOT_FOUND when
no application is deployed; the ChatService registration turns both into UNAVAILABLE, for
unary calls and streams, and leaves the gateway's own INTERNAL errors alone. A real grpc.aio server plays Ray's proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from museserve.serve.grpc_proxy import NO_APPLICATION, REPLICA_DIED, SERVER_FAULT, _CancelSafeRegistration

SERVICE = "t.S"
ACTOR_DIED = "The actor died unexpectedly before finishing this task.\n\tclass_name: ServeReplica:museserve:gateway"


def handlers(details: str, code: grpc.StatusCode) -> grpc.GenericRpcHandler:
    """What Ray's proxy does on a failed call: set code and details on the context, return."""

    async def unary(request: bytes, context: Any) -> bytes:
        context.set_code(code)
        context.set_details(details)
        return b""

    async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield b"partial"
        context.set_code(code)
        context.set_details(details)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )


async def statuses(details: str, code: grpc.StatusCode = grpc.StatusCode.INTERNAL) -> list[tuple[grpc.StatusCode, str]]:
    server = grpc.aio.server()
    _CancelSafeRegistration(server).add_generic_rpc_handlers([handlers(details, code)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    outcomes = []
    try:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")(b"r", timeout=10)
        stream = channel.unary_stream(f"/{SERVICE}/Stream")(b"r", timeout=10)
        for rpc in (unary, stream):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                if rpc is stream:
                    assert [m async for m in stream] == [b"partial"]
                else:
                    await rpc
            outcomes.append((caught.value.code(), caught.value.details()))
    finally:
        await channel.close()
        await server.stop(grace=None)
    return outcomes


async def test_a_dead_gateway_replica_is_unavailable_not_internal() -> None:
    assert await statuses(ACTOR_DIED) == [(grpc.StatusCode.UNAVAILABLE, REPLICA_DIED)] * 2


async def test_the_gateways_own_internal_error_is_kept() -> None:
    assert (
        await statuses("the model pool muse-tiny tier failed")
        == [(grpc.StatusCode.INTERNAL, "the model pool muse-tiny tier failed")] * 2
    )


async def test_no_application_while_the_app_starts_or_is_deleted_is_unavailable() -> None:
    ray_says = "Application metadata not set. Ping /ray.serve.RayServeAPIService/ListApplications for available apps."
    assert await statuses(ray_says, grpc.StatusCode.NOT_FOUND) == [(grpc.StatusCode.UNAVAILABLE, NO_APPLICATION)] * 2


async def test_a_ray_error_with_a_traceback_never_reaches_the_client() -> None:
    ray_says = 'ray::ServeReplica.handle_request()\nTraceback (most recent call last):\n  File "x.py", line 1\nKeyError'
    assert await statuses(ray_says) == [(grpc.StatusCode.INTERNAL, SERVER_FAULT)] * 2
