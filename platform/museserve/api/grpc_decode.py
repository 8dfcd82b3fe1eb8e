"""Request bytes that do not parse as the method's message are INVALID_ARGUMENT.

grpc deserializes a request before any handler runs; when the deserializer raises (a
string field that is not UTF-8, a field cut short) the call ends as UNKNOWN with
"Unexpected DecodeError: ...", which a client cannot act on. Wrapped handlers get an
`Undecodable` from the deserializer instead and refuse it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from museserve.api.grpc_status import to_grpc_status
from museserve.errors import InvalidArgument


@dataclass(frozen=True)
class Undecodable:
    reason: str


class TolerantDecoding:
    """Stands in for a grpc server while a servicer registers (`add_*Servicer_to_server`),
    passing on every handler wrapped by `tolerant`."""

    def __init__(self, server: Any):
        self._server = server

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        for handler in generic_handlers:
            handler._method_handlers = {name: tolerant(h) for name, h in handler._method_handlers.items()}
        self._server.add_generic_rpc_handlers(generic_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict) -> None:
        self._server.add_registered_method_handlers(
            service_name, {name: tolerant(h) for name, h in method_handlers.items()}
        )


def tolerant(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The handler with a deserializer that never raises: a unary request that does not parse is
    refused here; a streamed one reaches the handler as `Undecodable`."""
    decode = handler.request_deserializer
    if decode is None or isinstance(decode, _TolerantDeserializer):
        return handler
    if handler.request_streaming:  # the handler refuses an `Undecodable` message itself (Converse)
        return handler._replace(request_deserializer=_TolerantDeserializer(decode))
    # Ray's proxy sets all four behaviors: the streaming flags say which one grpc calls.
    if not handler.response_streaming and handler.unary_unary is not None:
        return handler._replace(
            request_deserializer=_TolerantDeserializer(decode), unary_unary=_refusing(handler.unary_unary)
        )
    if handler.response_streaming and handler.unary_stream is not None:
        return handler._replace(
            request_deserializer=_TolerantDeserializer(decode), unary_stream=_refusing(handler.unary_stream)
        )
    return handler


class _TolerantDeserializer:
    def __init__(self, decode):
        self._decode = decode

    def __call__(self, data: bytes) -> Any:
        try:
            return self._decode(data)
        except DecodeError as e:
            return Undecodable(str(e))


async def _refuse(context: Any, request: Undecodable) -> None:
    error = InvalidArgument(f"the request does not parse: {request.reason}", field="request")
    status = to_grpc_status(error, "")
    await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata[:1])


def _refusing(behavior):
    if inspect.isasyncgenfunction(behavior):

        async def stream(request, context):
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async for message in behavior(request, context):
                yield message

        return stream

    async def call(request, context):
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return call
