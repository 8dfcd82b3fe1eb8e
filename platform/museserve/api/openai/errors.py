"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status.

`param` is the offending field as OpenAI's API names it. The gateway names domain fields
(`sampling.temperature`, `mode.thinking_budget`): `openai_param` renames them, and leaves
names that are already OpenAI's unchanged. Pydantic's locations become the same paths.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.responses import JSONResponse

from museserve.errors import ErrorCode, MuseError

# code -> (HTTP status, OpenAI error type)
STATUSES: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    ErrorCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    ErrorCode.UNIMPLEMENTED: (400, "invalid_request_error"),
    ErrorCode.UNAUTHENTICATED: (401, "authentication_error"),
    ErrorCode.PERMISSION_DENIED: (403, "permission_error"),
    ErrorCode.NOT_FOUND: (404, "not_found_error"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    ErrorCode.CANCELLED: (499, "cancelled"),
    ErrorCode.INTERNAL: (500, "server_error"),
    ErrorCode.UNAVAILABLE: (503, "service_unavailable_error"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^sampling\.max_output_tokens$", "max_completion_tokens"),
        (r"^sampling\.prompt_logprobs$", "logprobs"),  # /v1/completions: `logprobs` with `echo`
        (r"^sampling\.", ""),
        (r"^mode\.mode$", "mode"),
        (r"^mode\.", ""),
        (r"^tool_choice\.(kind|name)$", "tool_choice"),
        (r"^tools\[(\d+)\]\.name$", r"tools[\1].function.name"),
        (r"^tools\[(\d+)\]\.parameters_json_schema$", r"tools[\1].function.parameters"),
        (r"\.tool_calls\[(\d+)\]\.arguments$", r".tool_calls[\1].function.arguments"),
        (r"\.image(\.data|\.url)?$", ".image_url.url"),
        (r"\.audio(\.data)?$", ".input_audio.data"),
        (r"\.audio\.format$", ".input_audio.format"),
        (r"^response_format\.kind$", "response_format.type"),
        (r"^response_format\.json_schema$", "response_format.json_schema.schema"),
        (r"^metadata\.x-user-id$", "user"),
        (r"^metadata\..*$", ""),
        (r"^adapter$", "model"),  # named as `MODEL:ADAPTER`
    ]
]


def openai_param(field: str, max_tokens_field: str = "max_completion_tokens") -> str | None:
    for pattern, replacement in _RENAMES:
        field = pattern.sub(replacement, field, count=1)
    if field == "max_completion_tokens":
        field = max_tokens_field
    return field or None


def error_json(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    error: MuseError,
    request_id: str,
    max_tokens_field: str = "max_completion_tokens",
    param_of: Callable[[str], str | None] | None = None,
) -> JSONResponse:
    """`param_of`: the API's name of a domain field (default: `openai_param`, chat's names)."""
    status, kind = STATUSES.get(error.code, (500, "server_error"))
    if not error.field:
        param = None
    else:
        param = param_of(error.field) if param_of is not None else openai_param(error.field, max_tokens_field)
    headers = {"x-request-id": request_id, **dict(error.metadata)}
    if error.retry_after_s is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after_s)))
        headers["retry-after-ms"] = str(max(1, math.ceil(error.retry_after_s * 1000)))
    message = f"{param}: {error.message}" if param else error.message
    return JSONResponse(error_json(message, kind, param, error.code.value), status_code=status, headers=headers)


# Labels pydantic puts in a location for the branch of a union: `str`, `list[...]`,
# `function-after[...]`, a model's class name. No field of the API looks like one.
_BRANCH = re.compile(r"[\[\(]|^(str|int|float|bool|none|list|dict)$|^[A-Z]")
_TAGGED = ("messages", "content")  # lists of tagged unions: pydantic puts the tag after the index
_TAGGED_FIELDS = ("response_format",)  # tagged unions: the tag follows the field


def param_from_loc(loc: Sequence[str | int]) -> str | None:
    """A pydantic error location -> `messages[0].content[1].image_url.url`."""
    parts: list[str | int] = []
    for i, item in enumerate(loc):
        if i == 0 and item == "body":
            continue
        if isinstance(item, str) and _BRANCH.search(item):
            continue
        if isinstance(item, str) and parts and loc[i - 1] == parts[-1] and _is_union_position(parts):
            continue  # the tag of a tagged union
        parts.append(item)
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out or None


def _is_union_position(parts: list[str | int]) -> bool:
    if isinstance(parts[-1], int):
        return len(parts) >= 2 and parts[-2] in _TAGGED
    return parts[-1] in _TAGGED_FIELDS


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[str, str | None]:
    """The first of pydantic's errors, as a message and its param."""
    if not errors:
        return "the request is not valid", None
    first = max(errors, key=lambda e: len(e.get("loc", ())))  # the deepest is the most specific
    param = param_from_loc(first.get("loc", ()))
    message = str(first.get("msg", "is not valid"))
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}", None
    if first.get("type") == "missing":
        message = "is required"
    elif first.get("type") == "extra_forbidden":
        message = "is not a supported field"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return (f"{param}: {message}{more}" if param else f"{message}{more}"), param
