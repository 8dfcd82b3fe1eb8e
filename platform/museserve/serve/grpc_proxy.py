"""Registers ChatService on Ray Serve's gRPC proxy so that a client cancel always
reaches the replicas.

Why: the proxy's streaming handler forwards a client cancel to the gateway replica only
when the cancel lands while it awaits the next message. When it lands while a message is
being handed to gRPC, the proxy's generator is closed at a `yield`, swallows the
GeneratorExit and never cancels the replica call (Ray 2.60: "async generator ignored
GeneratorExit" in the proxy log), and the model keeps generating for nobody.

The fix, from the servicer function Serve lets us register: each server-streaming
handler runs Ray's handler in a pump task that copies messages into an unbounded queue,
so the pump is only ever suspended inside Ray's wait for the next message. The gRPC side
reads from the queue; when it goes away, the pump is cancelled right there, and Ray's
own cancellation path runs (proxy -> gateway -> model pool).

The same wrapping turns Ray's INTERNAL for a gateway replica that died into UNAVAILABLE,
which clients retry (unary calls and streams alike), and so is Ray's NOT_FOUND while no
application is deployed (the app is starting, or being deleted after a drain). Any other
error text of Ray's that carries a Python traceback is replaced: clients never see one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from museserve.api.grpc_decode import tolerant
from museserve.v1 import chat_pb2_grpc

_END = object()
logger = logging.getLogger(__name__)


def add_chat_service(servicer: Any, server: Any) -> None:
    """A `grpc_servicer_functions` entry: ChatService with cancel-safe streams."""
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, _CancelSafeRegistration(server))


class _CancelSafeRegistration:
    """Lets Serve's server install its routing handlers, then wraps the streaming ones.

    Only generic handlers are registered: they are looked up per call, so the wrapped
    ones are what serves. (Registered-method handlers would bypass the wrapping.)
    """

    def __init__(self, server: Any):
        self._server = server

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(generic_handlers)
        for handler in generic_handlers:
            methods = handler._method_handlers
            handler._method_handlers = {name: tolerant(_cancel_safe(h)) for name, h in methods.items()}

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        return None


def _cancel_safe(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    if not handler.request_streaming and not handler.response_streaming and handler.unary_unary is not None:
        return handler._replace(unary_unary=_retryable_replica_death(handler.unary_unary))
    if handler.request_streaming or not handler.response_streaming or handler.unary_stream is None:
        return handler
    return handler._replace(unary_stream=_pumped(handler.unary_stream))


# Ray's proxy answers INTERNAL with the RayActorError's text (actor id, pid, ip) when the
# gateway replica it called died; every such text starts with this (ray.exceptions).
RAY_ACTOR_FAILURE = "The actor "
REPLICA_DIED = "the gateway replica went away; the request may be retried"
# Ray's proxy answers NOT_FOUND with this when it routes to no application at all.
RAY_NO_APPLICATION = "Application metadata not set"
NO_APPLICATION = "museserve is not being served here right now (starting or shutting down); retry"
TRACEBACK = "Traceback (most recent call last)"
SERVER_FAULT = "the gateway failed on this request; the details are in the server log"


def _mark_replica_death_retryable(context: Any) -> None:
    """A dead gateway replica is UNAVAILABLE (retry), not INTERNAL: Serve replaces it.
    The gateway's own INTERNAL errors carry its own messages and are left alone."""
    details = context.details() or ""
    if isinstance(details, bytes):
        details = details.decode(errors="replace")
    if context.code() == grpc.StatusCode.INTERNAL and details.startswith(RAY_ACTOR_FAILURE):
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details(REPLICA_DIED)
    elif context.code() == grpc.StatusCode.NOT_FOUND and details.startswith(RAY_NO_APPLICATION):
        context.set_code(grpc.StatusCode.UNAVAILABLE)
        context.set_details(NO_APPLICATION)
    elif TRACEBACK in details:
        logger.error("the proxy's call to the gateway failed: %s", details)
        context.set_details(SERVER_FAULT)


def _retryable_replica_death(unary: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    async def unary_unary(request: Any, context: Any) -> Any:
        response = await unary(request, context)
        _mark_replica_death_retryable(context)
        return response

    return unary_unary


def _pumped(stream: Callable[[Any, Any], AsyncIterator[Any]]) -> Callable[[Any, Any], Awaitable[None]]:
    # A coroutine handler that writes through the context, not an async generator: gRPC's
    # cancel then always lands inside it, while the RPC is still alive, and Ray's cleanup
    # (which reads the context) finishes before the handler returns. Letting Ray's
    # generator outlive the RPC crashes the proxy in grpc's C core.
    async def unary_stream(request: Any, context: Any) -> None:
        queue: asyncio.Queue = asyncio.Queue()  # unbounded: the pump must never wait on it

        async def pump() -> None:
            try:
                async for message in stream(request, context):
                    queue.put_nowait(message)
            finally:
                queue.put_nowait(_END)

        task = asyncio.ensure_future(pump())
        try:
            while (message := await queue.get()) is not _END:
                await context.write(message)
            await task  # re-raises what the pump raised
            _mark_replica_death_retryable(context)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])

    return unary_stream
