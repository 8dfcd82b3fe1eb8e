"""Domain results and stream events -> OpenAI `chat.completion` and `chat.completion.chunk`.

A stream is: one chunk with the assistant role, one chunk per delta (content,
`reasoning_content`, a whole tool call, or logprobs), one chunk with `finish_reason`,
then, with `stream_options.include_usage`, one chunk with `usage` and no choices; then
`data: [DONE]`. The shapes are checked against the official client's types in the tests.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from museserve.domain import (
    ChatResult,
    Finish,
    FinishReason,
    LogprobsDelta,
    PositionLogprobs,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
    Usage,
)

# OpenAI's finish reasons have no "cancelled": a cancelled stream has no reader left.
FINISH_REASONS = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CANCELLED: "stop",
}
MIN_LOGPROB = -9999.0  # JSON has no -Infinity; OpenAI uses this floor too

DONE = "data: [DONE]\n\n"


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def usage_json(u: Usage) -> dict[str, Any]:
    completion = u.reasoning_tokens + u.output_tokens
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": u.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _token_json(t: TokenLogprob) -> dict[str, Any]:
    logprob = t.logprob if math.isfinite(t.logprob) else MIN_LOGPROB
    return {"token": t.token, "logprob": max(logprob, MIN_LOGPROB), "bytes": list(t.token.encode("utf-8", "replace"))}


def logprobs_json(positions: tuple[PositionLogprobs, ...]) -> dict[str, Any]:
    content = [{**_token_json(p.chosen), "top_logprobs": [_token_json(t) for t in p.top]} for p in positions]
    return {"content": content, "refusal": None}


def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }
    return out if index is None else {"index": index, **out}


def completion_json(result: ChatResult, request_id: str, want_logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    if result.tool_calls:
        message["tool_calls"] = [tool_call_json(c) for c in result.tool_calls]
    elif not result.text:
        message["content"] = ""
    choice = {
        "index": 0,
        "message": message,
        "logprobs": logprobs_json(result.logprobs) if want_logprobs else None,
        "finish_reason": FINISH_REASONS[result.finish_reason],
    }
    body = {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [choice],
        "usage": usage_json(result.usage),
    }
    return {**body, **degraded_json(result.degraded)}


def degraded_json(degraded: str) -> dict[str, Any]:
    """Our extension: how an overloaded model served the request more cheaply (also the
    `x-museserve-degraded` header); absent when it was served as asked."""
    return {"degraded": degraded} if degraded else {}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ChunkStream:
    """Turns one request's stream events into SSE lines, in order."""

    def __init__(self, request_id: str, model: str, include_usage: bool):
        self._id = completion_id(request_id)
        self._created = int(time.time())
        self._model = model  # the requested name until Finish names the pool that served
        self._include_usage = include_usage
        self._tool_calls = 0
        self._usage: Usage | None = None

    def _envelope(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        head = {"id": self._id, "object": "chat.completion.chunk", "created": self._created, "model": self._model}
        return sse({**head, "choices": choices, **extra})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return self._envelope([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}])

    def start(self) -> str:
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: StreamEvent) -> list[str]:
        match event:
            case TextDelta(text):
                return [self._chunk({"content": text})]
            case ReasoningDelta(text):
                return [self._chunk({"reasoning_content": text})]
            case LogprobsDelta(positions):
                return [self._chunk({}, logprobs=logprobs_json(positions))]
            case ToolCallEvent(call):
                self._tool_calls += 1
                return [self._chunk({"tool_calls": [tool_call_json(call, self._tool_calls - 1)]})]
            case Usage():
                self._usage = event
            case Finish(reason, model, degraded):
                self._model = model
                last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": FINISH_REASONS[reason]}
                lines = [self._envelope([last], **degraded_json(degraded))]
                if self._include_usage:
                    lines.append(self._envelope([], usage=usage_json(self._usage or Usage())))
                return [*lines, DONE]
        return []  # agent progress has no OpenAI counterpart
