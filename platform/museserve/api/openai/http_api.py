"""The OpenAI-compatible HTTP routes over a `Gateway`: the HTTP edge.

The same policies as gRPC: `Authorization: Bearer <key>` -> `Gateway.identify`, the user
from `x-user-id` (else the body's `user`), then `Gateway.stream`. A streamed request
waits for its first event before answering, so anything refused before generation
(identity, validation, limits, shedding) is an HTTP error status, not a broken stream;
an error after that arrives as `data: {"error": ...}` and ends the stream. A client that
disconnects cancels the response task: the gateway stream is closed and the pool call
with it. Every completion (chat or text) ends with one `observer.request("http", code)`: the
gRPC code name of its final status (OK, the error's code, CANCELLED when the client went away).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from museserve.api.openai.choice_stream import ChoiceStream
from museserve.api.openai.completions_convert import completion_request_from_openai
from museserve.api.openai.completions_output import CompletionChunks, CompletionShape, text_completion_json
from museserve.api.openai.completions_schemas import CompletionRequest
from museserve.api.openai.convert import request_from_openai
from museserve.api.openai.errors import error_json, error_response, validation_message
from museserve.api.openai.http_common import (
    SSE_HEADERS,
    as_muse_error,
    credentials_of,
    failure_response,
    request_id_of,
    sse_lines,
)
from museserve.api.openai.model_names import (
    adapter_model_id,
    answered_model,
    events_with_answered_model,
    with_answered_model,
)
from museserve.api.openai.output import ChunkStream, completion_json
from museserve.api.openai.responses import ChatCompletionChunk
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.domain import ChatRequest, ChatResult, Identity, ModelInfo
from museserve.errors import NotFound
from museserve.gateway.gateway import Gateway


class OpenAIHttpApi:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def chat_completions(self, body: ChatCompletionRequest, request: Request) -> Response:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunks(chat: ChatRequest, model: str) -> ChoiceStream:
            n, continuous = chat.sampling.n, chat.usage_in_stream
            return ChunkStream(chat.request_id, model, include_usage, n=n, continuous_usage=continuous)

        return await self._serve(
            request,
            body.user,
            lambda identity, request_id: request_from_openai(body, request_id, identity, self._models()),
            chunks if body.stream else None,
            lambda result, chat: completion_json(result, chat.request_id, bool(body.logprobs)),
            "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens",
            body.model,
        )

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        echo = bool(body.echo)

        def chunks(chat: ChatRequest, model: str) -> ChoiceStream:
            shape = CompletionShape.of(chat, echo)
            return CompletionChunks(chat.request_id, model, shape, include_usage, chat.usage_in_stream)

        return await self._serve(
            request,
            body.user,
            lambda identity, request_id: completion_request_from_openai(body, request_id, identity, self._models()),
            chunks if body.stream else None,
            lambda result, chat: text_completion_json(result, chat.request_id, CompletionShape.of(chat, echo)),
            "max_tokens",
            body.model,
        )

    async def list_models(self, request: Request) -> Response:
        try:
            identity = await self.gateway.identify(credentials_of(request, None))
        except Exception as e:
            return failure_response(e, request_id_of(request))
        return JSONResponse({"object": "list", "data": self._model_entries(identity)})

    async def retrieve_model(self, model_id: str, request: Request) -> Response:
        request_id = request_id_of(request)
        try:
            identity = await self.gateway.identify(credentials_of(request, None))
            for entry in self._model_entries(identity):
                if entry["id"] == model_id:
                    return JSONResponse(entry)
            raise NotFound(f"the model {model_id!r} does not exist", field="model")
        except Exception as e:
            return failure_response(e, request_id)

    def _model_entries(self, caller: Identity) -> list[dict[str, Any]]:
        """The served models, default first, then each adapter the caller may use as a model of
        its own (`MODEL:ADAPTER`, its `parent` the base model, as vLLM lists LoRA adapters)."""
        models = self.gateway.list_models(caller)
        adapters = [adapter_json(info, adapter) for info, _ in models for adapter in info.adapters]
        return [model_json(info, default) for info, default in models] + adapters

    def _ended(self, code: str) -> None:
        self.gateway.observer.request("http", code)

    def _models(self) -> dict[str, ModelInfo]:
        return {info.name: info for info, _ in self.gateway.list_models()}

    async def _serve(
        self,
        request: Request,
        body_user: str | None,
        convert: Callable[[Identity, str], ChatRequest],
        chunks: Callable[[ChatRequest, str], ChoiceStream] | None,
        answer: Callable[[ChatResult, ChatRequest], dict[str, Any]],
        max_tokens_field: str,
        asked_model: str,
    ) -> Response:
        """One completion, streamed when `chunks` is given (it builds the stream's lines from the
        request and the model that serves it), else answered whole as `answer` shapes it.
        `asked_model`: the body's `model`, which the response names when it carries an adapter."""
        request_id = request_id_of(request)
        headers = {"x-request-id": request_id}
        try:
            identity = await self.gateway.identify(credentials_of(request, body_user))
            chat = convert(identity, request_id)
            if chunks is not None:
                return await self._stream(chat, chunks, headers, asked_model)
            result = with_answered_model(await self.gateway.chat(chat, headers.update), chat, asked_model)
        except Exception as e:
            error = as_muse_error(e, request_id)
            self._ended(error.code.name)
            return error_response(error, request_id, max_tokens_field)
        self._ended("OK")
        return JSONResponse(answer(result, chat), headers=headers)

    async def _stream(
        self,
        chat: ChatRequest,
        chunks: Callable[[ChatRequest, str], ChoiceStream],
        headers: dict[str, str],
        asked_model: str,
    ) -> Response:
        events = events_with_answered_model(self.gateway.stream(chat, headers.update), chat, asked_model)
        first = await anext(events)  # errors before the first event become the HTTP status
        lines = chunks(chat, answered_model(chat, asked_model, headers.get("x-served-by", chat.model)))
        return StreamingResponse(
            sse_lines(events, first, lines, chat.request_id, self._ended),
            media_type="text/event-stream",
            headers={**headers, **SSE_HEADERS},
        )


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


def adapter_json(base: ModelInfo, adapter: str) -> dict[str, Any]:
    """An adapter of `base` as a model: what a request names (`MODEL:ADAPTER`) and `base`'s limits."""
    return {**model_json(base, False), "id": adapter_model_id(base.name, adapter), "parent": base.name}


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
        return failure_response(exc, request_id_of(request))

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
