"""Domain results and stream events -> OpenAI `chat.completion` and `chat.completion.chunk`.

A stream is: one chunk with the assistant role per answer, one chunk per delta (content,
`reasoning_content`, a whole tool call, or logprobs), each naming its answer's `index`,
then the end `choice_stream` describes: a chunk with `finish_reason` per answer, the usage
chunk, `data: [DONE]`. A non-streamed completion lists every answer (n > 1) in `choices`.
The shapes are checked against the official client's types in the tests.
"""

from __future__ import annotations

import math
import time
from typing import Any

from museserve.api.openai.choice_stream import DONE as DONE  # re-exported: output's names before choice_stream
from museserve.api.openai.choice_stream import FINISH_REASONS, ChoiceStream, degraded_json, usage_json
from museserve.api.openai.choice_stream import sse as sse
from museserve.domain import (
    ChatChoice,
    ChatResult,
    LogprobsDelta,
    PositionLogprobs,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
)

MIN_LOGPROB = -9999.0  # JSON has no -Infinity; OpenAI uses this floor too


def completion_id(request_id: str) -> str:
    return f"chatcmpl-{request_id}"


def json_logprob(logprob: float) -> float:
    """A log probability JSON can carry: -inf (and NaN) become OpenAI's floor."""
    return max(logprob, MIN_LOGPROB) if math.isfinite(logprob) else MIN_LOGPROB


def _token_json(t: TokenLogprob) -> dict[str, Any]:
    return {"token": t.token, "logprob": json_logprob(t.logprob), "bytes": list(t.token.encode("utf-8", "replace"))}


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


def answers(result: ChatResult) -> tuple[ChatChoice, ...]:
    """Every answer of a result: its `choices` (n > 1), else the one its fields hold."""
    if result.choices:
        return result.choices
    return (ChatChoice(result.text, result.reasoning, result.tool_calls, result.finish_reason, result.logprobs),)


def _choice_json(index: int, answer: ChatChoice, want_logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    if answer.reasoning:
        message["reasoning_content"] = answer.reasoning
    if answer.tool_calls:
        message["tool_calls"] = [tool_call_json(c) for c in answer.tool_calls]
    elif not answer.text:
        message["content"] = ""
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs_json(answer.logprobs) if want_logprobs else None,
        "finish_reason": FINISH_REASONS[answer.finish_reason],
    }


def completion_json(result: ChatResult, request_id: str, want_logprobs: bool) -> dict[str, Any]:
    body = {
        "id": completion_id(request_id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [_choice_json(i, a, want_logprobs) for i, a in enumerate(answers(result))],
        "usage": usage_json(result.usage),
    }
    return {**body, **degraded_json(result.degraded)}


class ChunkStream(ChoiceStream):
    """Turns one chat request's stream events into SSE lines, in order."""

    def __init__(self, request_id: str, model: str, include_usage: bool, *, n: int = 1, continuous_usage: bool = False):
        super().__init__(completion_id(request_id), "chat.completion.chunk", model, n, include_usage, continuous_usage)
        self._tool_calls = [0] * n  # calls streamed so far, per answer: the next call's index

    @staticmethod
    def _choice(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def start(self) -> list[str]:
        opening = {"role": "assistant", "content": ""}
        return [line for i in range(self.n) for line in self._send([self._choice(i, opening)], opening=True)]

    def _delta(self, event: StreamEvent) -> list[str]:
        match event:
            case TextDelta(text, i):
                return self._send([self._choice(i, {"content": text})])
            case ReasoningDelta(text, i):
                return self._send([self._choice(i, {"reasoning_content": text})])
            case LogprobsDelta(positions, i):
                return self._send([self._choice(i, {}, logprobs=logprobs_json(positions))])
            case ToolCallEvent(call, i):
                self._tool_calls[i] += 1
                return self._send([self._choice(i, {"tool_calls": [tool_call_json(call, self._tool_calls[i] - 1)]})])
        return []  # agent progress and prompt log probabilities have no chat counterpart

    def _finishing(self, index: int, reason: str) -> dict[str, Any]:
        return self._choice(index, {}, reason)
