"""The Responses API routes over a `Gateway`: create, retrieve, delete and list input items.

Create is chat's request path (`Gateway.stream`) with the Responses API's shapes; identity,
limits and the HTTP statuses of errors are chat's (`http_common`). A streamed create waits
for its first event, so a refusal before generation is an HTTP status; after that an error
ends the stream with `response.failed`. With `store` (the default) the gateway keeps the
answer and its conversation under the id it generates (sent as `x-museserve-response-id`
before the first event), with this edge's echo of the request (`ChatRequest.stored_echo`),
so retrieve shows the response as create did. Without it
the id is this edge's own and nothing is kept. Stored responses are the caller's tenant's
only: another tenant's id is NOT_FOUND, as an expired one is.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from museserve.api.openai.errors import error_response as chat_error_response
from museserve.api.openai.http_common import SSE_HEADERS, as_muse_error, credentials_of, request_id_of, sse_lines
from museserve.api.openai.responses_convert import request_from_responses
from museserve.api.openai.responses_items import input_items, item_page
from museserve.api.openai.responses_output import answer_json, default_echo, request_echo
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.api.openai.responses_stream import ResponseEventStream
from museserve.domain import ChatRequest, ModelInfo, StreamEvent
from museserve.errors import InvalidArgument, MuseError
from museserve.gateway.conversation_codec import StoredResponse
from museserve.gateway.conversations import ConversationStore, new_response_id
from museserve.gateway.events import ResultFold
from museserve.gateway.gateway import Gateway, MetadataSink

RESPONSE_ID_HEADER = "x-museserve-response-id"

# Domain field names (the gateway's errors) -> the Responses API's. The indexes of the
# gateway's `messages[i]` count the stored conversation and the instructions, not `input`.
_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^sampling\.", ""),
        (r"^mode\.mode$", "mode"),
        (r"^mode\.", ""),
        (r"^tool_choice\..*$", "tool_choice"),
        (r"^tools\[(\d+)\]\.parameters_json_schema$", r"tools[\1].parameters"),
        (r"^response_format\.kind$", "text.format.type"),
        (r"^response_format\.json_schema$", "text.format.schema"),
        (r"^response_format$", "text.format"),
        (r"^messages(\[.*)?$", "input"),
        (r"^metadata\.x-user-id$", "user"),
        (r"^metadata\..*$", ""),
        (r"^adapter$", "model"),  # named as `MODEL:ADAPTER`
    ]
]


def responses_param(field: str) -> str | None:
    for pattern, replacement in _RENAMES:
        field = pattern.sub(replacement, field, count=1)
    return field or None


def error_response(error: MuseError, request_id: str) -> JSONResponse:
    """As chat's, with the Responses API's field names."""
    return chat_error_response(error, request_id, param_of=responses_param)


def stored_json(stored: StoredResponse) -> dict[str, Any]:
    echo = dict(stored.echo) or default_echo(stored.created_at, stored.instructions, stored.previous_response_id)
    return answer_json(stored.response_id, stored, echo)


class ResponsesHttpApi:
    def __init__(self, gateway: Gateway, store: ConversationStore | None = None):
        """`store`: where the gateway keeps stored answers (default: `gateway.conversations`)."""
        store = store if store is not None else gateway.conversations
        if not isinstance(store, ConversationStore):
            raise TypeError("the Responses API reads stored answers from a ConversationStore")
        self.gateway = gateway
        self._store = store

    async def create(self, body: ResponseCreateRequest, request: Request) -> Response:
        request_id = request_id_of(request)
        headers = {"x-request-id": request_id}
        try:
            identity = await self.gateway.identify(credentials_of(request, body.user))
            chat = request_from_responses(body, request_id, identity, self._models())
            echo = request_echo(body, time.time())
            if body.stream:
                return await self._stream(chat, echo, headers)
            fold = ResultFold()
            events = self._events(chat, echo, headers.update)
            try:
                async for event in events:
                    fold.add(event)
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        except Exception as e:
            error = as_muse_error(e, request_id)
            self._ended(error.code.name)
            return error_response(error, request_id)
        self._ended("OK")
        result = fold.result()
        response_id = result.response_id or new_response_id()
        return JSONResponse(answer_json(response_id, result, echo, result.degraded), headers=headers)

    async def retrieve(self, response_id: str, request: Request, stream: bool | None = None) -> Response:
        request_id = request_id_of(request)
        try:
            if stream:
                raise InvalidArgument("a stored response cannot be streamed again", field="stream")
            stored = await self._stored(response_id, request)
        except Exception as e:
            return error_response(as_muse_error(e, request_id), request_id)
        return JSONResponse(stored_json(stored), headers={"x-request-id": request_id})

    async def delete(self, response_id: str, request: Request) -> Response:
        request_id = request_id_of(request)
        try:
            identity = await self.gateway.identify(credentials_of(request, None))
            await self._store.delete(identity, response_id)
        except Exception as e:
            return error_response(as_muse_error(e, request_id), request_id)
        body = {"id": response_id, "object": "response", "deleted": True}
        return JSONResponse(body, headers={"x-request-id": request_id})

    async def list_input_items(
        self, response_id: str, request: Request, after: str | None, limit: int, order: Literal["asc", "desc"]
    ) -> Response:
        request_id = request_id_of(request)
        try:
            stored = await self._stored(response_id, request)
            page = item_page(input_items(stored.response_id, stored.input_messages()), after, limit, order)
        except Exception as e:
            return error_response(as_muse_error(e, request_id), request_id)
        return JSONResponse(page, headers={"x-request-id": request_id})

    async def _stored(self, response_id: str, request: Request) -> StoredResponse:
        identity = await self.gateway.identify(credentials_of(request, None))
        return await self._store.get(identity, response_id)

    async def _stream(self, chat: ChatRequest, echo: dict[str, Any], headers: dict[str, str]) -> Response:
        events = self._events(chat, echo, headers.update)
        first = await anext(events)  # errors before the first event become the HTTP status
        response_id = headers.get(RESPONSE_ID_HEADER) or new_response_id()  # the gateway's, sent before the first
        out = ResponseEventStream(response_id, headers.get("x-served-by", chat.model), echo)
        return StreamingResponse(
            sse_lines(events, first, out, chat.request_id, self._ended),
            media_type="text/event-stream",
            headers={**headers, **SSE_HEADERS},
        )

    async def _events(
        self, chat: ChatRequest, echo: dict[str, Any], on_metadata: MetadataSink
    ) -> AsyncIterator[StreamEvent]:
        """The gateway's stream; a stored answer keeps `echo` (the gateway saves it before its last event)."""
        if chat.store:
            chat = replace(chat, stored_echo=json.dumps(echo, ensure_ascii=False, separators=(",", ":")))
        stream = self.gateway.stream(chat, on_metadata)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def _ended(self, code: str) -> None:
        self.gateway.observer.request("http", code)

    def _models(self) -> dict[str, ModelInfo]:
        return {info.name: info for info, _ in self.gateway.list_models()}
