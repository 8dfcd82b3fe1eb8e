"""The OpenAI-compatible HTTP routes over a `Gateway`: the HTTP edge.

The same policies as gRPC: `Authorization: Bearer <key>` -> `Gateway.identify`, the user
from `x-user-id` (else the body's `user`), then `Gateway.stream`. A streamed request
waits for its first event before answering, so anything refused before generation
(identity, validation, limits, shedding) is an HTTP error status, not a broken stream;
an error after that arrives as `data: {"error": ...}` and ends the stream. A client that
disconnects cancels the response task: the gateway stream is closed and the pool call
with it. Every chat completion ends with one `observer.request("http", code)`: the gRPC
code name of its final status (OK, the error's code, CANCELLED when the client went away).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from museserve.api.grpc_api import REQUEST_ID
from museserve.api.openai.convert import request_from_openai
from museserve.api.openai.errors import STATUSES, error_json, error_response, validation_message
from museserve.api.openai.output import ChunkStream, completion_json, sse
from museserve.api.openai.responses import ChatCompletionChunk
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.domain import ChatRequest, ModelInfo, StreamEvent
from museserve.errors import Internal, MuseError, NotFound
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import Credentials

logger = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIHttpApi:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        request_id = _request_id(request)
        headers = {"x-request-id": request_id}
        max_tokens_field = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
        try:
            identity = await self.gateway.identify(_credentials(request, body.user))
            chat = request_from_openai(body, request_id, identity, self._models())
            if body.stream:
                return await self._stream(chat, body, headers)
            result = await self.gateway.chat(chat, headers.update)
        except Exception as e:
            error = _as_muse_error(e, request_id)
            self._ended(error.code.name)
            return error_response(error, request_id, max_tokens_field)
        self._ended("OK")
        return JSONResponse(completion_json(result, request_id, bool(body.logprobs)), headers=headers)

    async def list_models(self, request: Request) -> Response:
        try:
            await self.gateway.identify(_credentials(request, None))
        except Exception as e:
            return _failure(e, _request_id(request))
        data = [model_json(info, default) for info, default in self.gateway.list_models()]
        return JSONResponse({"object": "list", "data": data})

    async def retrieve_model(self, model_id: str, request: Request) -> Response:
        request_id = _request_id(request)
        try:
            await self.gateway.identify(_credentials(request, None))
            for info, default in self.gateway.list_models():
                if info.name == model_id:
                    return JSONResponse(model_json(info, default))
            raise NotFound(f"the model {model_id!r} does not exist", field="model")
        except Exception as e:
            return _failure(e, request_id)

    def _ended(self, code: str) -> None:
        self.gateway.observer.request("http", code)

    def _models(self) -> dict[str, ModelInfo]:
        return {info.name: info for info, _ in self.gateway.list_models()}

    async def _stream(self, chat: ChatRequest, body: ChatCompletionRequest, headers: dict[str, str]) -> Response:
        events = self.gateway.stream(chat, headers.update)
        first = await anext(events)  # errors before the first event become the HTTP status
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = ChunkStream(chat.request_id, headers.get("x-served-by", chat.model), include_usage)
        return StreamingResponse(
            _sse_lines(events, first, chunks, chat.request_id, self._ended),
            media_type="text/event-stream",
            headers={**headers, **SSE_HEADERS},
        )


async def _sse_lines(
    events: AsyncIterator[StreamEvent],
    first: StreamEvent,
    chunks: ChunkStream,
    request_id: str,
    ended: Callable[[str], None],
) -> AsyncIterator[str]:
    code = "CANCELLED"  # unless the stream ends: the client went away
    try:
        yield chunks.start()
        for line in chunks.event(first):
            yield line
        async for event in events:
            for line in chunks.event(event):
                yield line
        code = "OK"
    except Exception as e:
        error = _as_muse_error(e, request_id)
        code = error.code.name
        yield sse(error_json(str(error), STATUSES[error.code][1], None, error.code.value))
    finally:
        ended(code)
        await events.aclose()  # type: ignore[attr-defined]


def model_json(info: ModelInfo, is_default: bool) -> dict[str, Any]:
    return {
        "id": info.name,
        "object": "model",
        "created": 0,
        "owned_by": "museserve",
        "context_length": info.context_length,
        "max_model_len": info.context_length,  # vLLM's name for the same window
        "max_output_tokens": info.max_output_tokens,
        "modes": [str(m) for m in info.modes],
        "is_default": is_default,
    }


def _request_id(request: Request) -> str:
    candidate = request.headers.get("x-request-id", "")
    return candidate if REQUEST_ID.fullmatch(candidate) else uuid.uuid4().hex


def _credentials(request: Request, body_user: str | None) -> Credentials:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    api_key = token.strip() if scheme.lower() == "bearer" else ""
    user = request.headers.get("x-user-id") or body_user or ""
    return Credentials(api_key=api_key or request.headers.get("x-api-key", ""), user=user)


def _as_muse_error(error: BaseException, request_id: str) -> MuseError:
    if isinstance(error, MuseError):
        if error.code.name in ("INTERNAL", "UNAVAILABLE"):
            logger.warning("request %s: %s %s", request_id, error.code.name, error)
        return error
    logger.error("request %s failed in the server", request_id, exc_info=error)
    return Internal(f"internal error; request id {request_id}")


def _failure(error: BaseException, request_id: str, max_tokens_field: str = "max_completion_tokens") -> Response:
    return error_response(_as_muse_error(error, request_id), request_id, max_tokens_field)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the framework itself answers, in OpenAI's shape: bad bodies are 400, not 422."""

    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_json(message, "invalid_request_error", param, "invalid_value"), status_code=400)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        body = error_json(str(exc.detail), kind, None, None)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def fault(request: Request, exc: Exception) -> Response:
        return _failure(exc, _request_id(request))

    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, fault)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, saying what is really sent: 400 instead of 422, and bearer auth on /v1."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            if path.startswith("/v1/"):
                operation["security"] = [{"bearer": []}]
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    chunk = ChatCompletionChunk.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(chunk.pop("$defs", {}))
    schemas["ChatCompletionChunk"] = chunk  # the events of a stream, referenced from its text/event-stream
    doc.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    app.openapi_schema = doc
    return doc
