"""What every OpenAI-compatible route shares: the request id, the caller's credentials, and
any failure as a `MuseError` in OpenAI's error shape.

Identity is the same as over gRPC: `Authorization: Bearer <key>` (or `x-api-key`), the user
from `x-user-id`, else the body's `user`. A failure that is not a `MuseError` is a server
fault: logged with its traceback, answered as INTERNAL with the request id only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from fastapi.responses import Response
from starlette.requests import HTTPConnection

from museserve.api.grpc_api import REQUEST_ID
from museserve.api.openai.errors import error_response
from museserve.domain import StreamEvent
from museserve.errors import Internal, MuseError
from museserve.gateway.identity import Credentials

logger = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def request_id_of(request: HTTPConnection) -> str:
    """The client's `x-request-id` when it is a valid id, else a fresh one."""
    candidate = request.headers.get("x-request-id", "")
    return candidate if REQUEST_ID.fullmatch(candidate) else uuid.uuid4().hex


def credentials_of(request: HTTPConnection, body_user: str | None) -> Credentials:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    api_key = token.strip() if scheme.lower() == "bearer" else ""
    user = request.headers.get("x-user-id") or body_user or ""
    return Credentials(api_key=api_key or request.headers.get("x-api-key", ""), user=user)


def as_muse_error(error: BaseException, request_id: str) -> MuseError:
    if isinstance(error, MuseError):
        if error.code.name in ("INTERNAL", "UNAVAILABLE"):
            logger.warning("request %s: %s %s", request_id, error.code.name, error)
        return error
    logger.error("request %s failed in the server", request_id, exc_info=error)
    return Internal(f"internal error; request id {request_id}")


def failure_response(
    error: BaseException, request_id: str, max_tokens_field: str = "max_completion_tokens"
) -> Response:
    return error_response(as_muse_error(error, request_id), request_id, max_tokens_field)


class EventLines(Protocol):
    """A stream's wire format: the lines before its first event, each event's, and an error's."""

    def start(self) -> list[str]: ...

    def event(self, event: StreamEvent) -> list[str]: ...

    def failed(self, error: MuseError) -> list[str]: ...


async def sse_lines(
    events: AsyncIterator[StreamEvent],
    first: StreamEvent,
    out: EventLines,
    request_id: str,
    ended: Callable[[str], None],
) -> AsyncIterator[str]:
    """A streamed response's body: `first` (already awaited, so errors before it were HTTP
    statuses), then the rest; an error after that ends the stream in `out`'s shape. `ended`
    hears the final code: OK, the error's, or CANCELLED when the client went away."""
    code = "CANCELLED"  # unless the stream ends: the client went away
    try:
        for line in out.start() + out.event(first):
            yield line
        async for event in events:
            for line in out.event(event):
                yield line
        code = "OK"
    except Exception as e:
        error = as_muse_error(e, request_id)
        code = error.code.name
        for line in out.failed(error):
            yield line
    finally:
        ended(code)
        await events.aclose()  # type: ignore[attr-defined]
