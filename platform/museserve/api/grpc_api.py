"""The gRPC methods of ChatService over a `Gateway`: the API edge.

Protobuf is converted to domain types on the way in and back on the way out; every
`MuseError` becomes its gRPC status. Anything else is a server fault: it is logged with
its traceback and reaches the client as INTERNAL with the request id only, never the
traceback. The context is any object with the ServicerContext methods used below (a
Ray Serve gRPC context or a grpc.aio one). Every Chat and ChatStream call ends with one
`observer.request("grpc", code)`: its final status, CANCELLED when the caller went away.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Protocol

import grpc

from museserve.api.convert import event_to_pb, model_info_to_pb, request_from_pb, result_to_pb
from museserve.api.grpc_converse import converse
from museserve.api.grpc_status import to_grpc_status
from museserve.domain import ChatRequest, Identity
from museserve.errors import Internal, MuseError
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import Credentials
from museserve.v1 import chat_pb2 as pb

logger = logging.getLogger(__name__)

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # whole string: fullmatch


class RpcContext(Protocol):
    def invocation_metadata(self) -> list[tuple[str, str]]: ...
    def set_code(self, code: grpc.StatusCode) -> None: ...
    def set_details(self, details: str) -> None: ...
    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str | bytes]]) -> None: ...


class RpcFailed(Exception):
    """Raised after the status is set on the context, to end a stream with that status."""


class GrpcChatApi:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def chat(self, msg: pb.ChatRequest, context: RpcContext) -> pb.ChatResponse:
        request_id = _request_id(msg, context)
        trailers = _Trailers(context, request_id)
        try:
            identity = await self.gateway.identify(_credentials(context))
            result = await self.gateway.chat(_request(msg, request_id, identity, context), trailers.add)
        except Exception as e:
            self._ended(_set_status(context, e, request_id))
            return pb.ChatResponse()
        self._ended(grpc.StatusCode.OK)
        return result_to_pb(result, request_id)

    async def chat_stream(self, msg: pb.ChatRequest, context: RpcContext) -> AsyncIterator[pb.ChatEvent]:
        request_id = _request_id(msg, context)
        trailers = _Trailers(context, request_id)
        code = grpc.StatusCode.CANCELLED  # unless the stream ends: the caller went away
        try:
            identity = await self.gateway.identify(_credentials(context))
            async for event in self.gateway.stream(_request(msg, request_id, identity, context), trailers.add):
                yield event_to_pb(event, request_id)
            code = grpc.StatusCode.OK
        except Exception as e:
            code = _set_status(context, e, request_id)
            raise RpcFailed(str(e)) from None
        finally:
            self._ended(code)

    async def converse(
        self, messages: AsyncIterator[pb.ConverseRequest], context: RpcContext
    ) -> AsyncIterator[pb.ConverseEvent]:
        """A live voice session (`api.grpc_converse`); ends with one `observer.request` like a stream."""
        request_id = _request_id(pb.ChatRequest(), context)
        trailers = _Trailers(context, request_id)
        code = grpc.StatusCode.CANCELLED
        try:
            identity = await self.gateway.identify(_credentials(context))
            async for event in converse(self.gateway, messages, identity, request_id, trailers.add):
                yield event
            code = grpc.StatusCode.OK
        except Exception as e:
            code = _set_status(context, e, request_id)
            raise RpcFailed(str(e)) from None
        finally:
            self._ended(code)

    async def count_tokens(self, msg: pb.ChatRequest, context: RpcContext) -> pb.CountTokensResponse:
        request_id = _request_id(msg, context)
        try:
            identity = await self.gateway.identify(_credentials(context))
            count = await self.gateway.count_tokens(request_from_pb(msg, request_id, identity))
        except Exception as e:
            _set_status(context, e, request_id)
            return pb.CountTokensResponse()
        return pb.CountTokensResponse(
            prompt_tokens=count.prompt_tokens, context_length=count.context_length, model=count.pool
        )

    async def list_models(self, msg: pb.ListModelsRequest, context: RpcContext) -> pb.ListModelsResponse:
        try:
            identity = await self.gateway.identify(_credentials(context))
        except Exception as e:
            _set_status(context, e, uuid.uuid4().hex)
            return pb.ListModelsResponse()
        return pb.ListModelsResponse(models=[model_info_to_pb(m, d) for m, d in self.gateway.list_models(identity)])

    def _ended(self, code: grpc.StatusCode) -> None:
        self.gateway.observer.request("grpc", code.name)


def _request(msg: pb.ChatRequest, request_id: str, identity: Identity, context: RpcContext) -> ChatRequest:
    """The domain request, with the caller's gRPC deadline where the context carries one (a
    grpc.aio context does; Ray Serve's proxy context does not)."""
    request = request_from_pb(msg, request_id, identity)
    time_remaining = getattr(context, "time_remaining", None)
    remaining = time_remaining() if callable(time_remaining) else None
    return replace(request, deadline_unix_s=time.time() + remaining) if remaining is not None else request


def _metadata(context: RpcContext, key: str) -> str:
    for k, v in context.invocation_metadata():
        if k == key:
            return v
    return ""


def _request_id(msg: pb.ChatRequest, context: RpcContext) -> str:
    candidate = msg.request_id or _metadata(context, "x-request-id")
    return candidate if REQUEST_ID.fullmatch(candidate) else uuid.uuid4().hex


def _credentials(context: RpcContext) -> Credentials:
    """The API key from `authorization: Bearer <key>` (or `x-api-key`), the user from `x-user-id`."""
    authorization = _metadata(context, "authorization")
    scheme, _, token = authorization.partition(" ")
    api_key = token.strip() if scheme.lower() == "bearer" else ""
    return Credentials(api_key=api_key or _metadata(context, "x-api-key"), user=_metadata(context, "x-user-id"))


class _Trailers:
    """Trailing metadata of one call: the request id, then what the gateway adds (the pool
    that served, the remaining quota)."""

    def __init__(self, context: RpcContext, request_id: str):
        self._context = context
        self._pairs: list[tuple[str, str | bytes]] = [("x-request-id", request_id)]
        context.set_trailing_metadata(self._pairs)

    def add(self, pairs) -> None:
        self._pairs.extend(pairs)
        self._context.set_trailing_metadata(self._pairs)


def _set_status(context: RpcContext, error: BaseException, request_id: str) -> grpc.StatusCode:
    if not isinstance(error, MuseError):
        logger.exception("request %s failed in the server", request_id, exc_info=error)
        error = Internal(f"internal error; request id {request_id}")
    elif error.code.name in ("INTERNAL", "UNAVAILABLE"):
        logger.warning("request %s: %s %s", request_id, error.code.name, error)
    status = to_grpc_status(error, request_id)
    context.set_code(status.code)
    context.set_details(status.details)
    context.set_trailing_metadata(list(status.trailing_metadata))
    return status.code
