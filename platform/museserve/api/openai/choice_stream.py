"""What the chat and the text-completion streams share: server-sent events, the usage JSON,
and the choices of an n > 1 request that end one by one.

A stream's end, for both: each answer's finishing chunk (from its `ChoiceEnd`, or at `Finish`
for an answer that had none: n = 1), the last of them carrying `degraded`; then, with
`stream_options.include_usage`, a chunk with `usage` and no choices; then `data: [DONE]`.

With `continuous_usage_stats` every chunk carries `usage`: the running counts from the
`RunningUsage` that follows each engine step's events. A step's chunks are held until it
arrives (it comes with them, so nothing waits for another step), so each chunk's counts
include its own tokens; the opening chunks count the prompt only, as vLLM's do.
"""

from __future__ import annotations

import json
import time
from typing import Any

from museserve.api.openai.errors import STATUSES, error_json
from museserve.domain import ChoiceEnd, Finish, FinishReason, RunningUsage, StreamEvent, Usage
from museserve.errors import MuseError

# OpenAI's finish reasons have no "cancelled": a cancelled stream has no reader left.
FINISH_REASONS = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CANCELLED: "stop",
}

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def usage_json(u: Usage) -> dict[str, Any]:
    completion = u.reasoning_tokens + u.output_tokens
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": u.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def degraded_json(degraded: str) -> dict[str, Any]:
    """Our extension: how an overloaded model served the request more cheaply (also the
    `x-museserve-degraded` header); absent when it was served as asked."""
    return {"degraded": degraded} if degraded else {}


class ChoiceStream:
    """One request's events -> SSE lines. Subclasses shape the choices (`_delta`, `_finishing`)."""

    def __init__(self, completion_id: str, kind: str, model: str, n: int, include_usage: bool, continuous_usage: bool):
        # `model`: the requested name until Finish names the pool that served.
        self._head: dict[str, Any] = {"id": completion_id, "object": kind, "created": int(time.time()), "model": model}
        self.n = n
        self._include_usage = include_usage
        self._continuous = continuous_usage
        self._held: list[tuple[dict[str, Any], bool]] = []  # (chunk, opening), until the step's usage
        self._open = list(range(n))  # answers with no finishing chunk yet
        self._last_end: tuple[int, FinishReason] | None = None
        self._usage = Usage()

    def start(self) -> list[str]:
        """The lines sent before the first event."""
        return []

    def event(self, event: StreamEvent) -> list[str]:
        match event:
            case ChoiceEnd(index, reason):
                return self._settle() + self._choice_end(index, reason)
            case RunningUsage(usage):
                return self._settle() + self._flush(usage)
            case Usage():
                self._usage = event
                return self._settle() + self._flush(event)
            case Finish():
                return self._settle() + self._finish(event)
        return self._delta(event)

    def failed(self, error: MuseError) -> list[str]:
        """An error after the stream started: OpenAI's `data: {"error": ...}` event."""
        return [sse(error_json(str(error), STATUSES[error.code][1], None, error.code.value))]

    def _delta(self, event: StreamEvent) -> list[str]:
        """An answer's delta (or PromptLogprobs) -> lines; what has no OpenAI counterpart -> []."""
        return []

    def _settle(self) -> list[str]:
        """What a subclass holds back for a later delta, sent before the step ends."""
        return []

    def _finishing(self, index: int, reason: str) -> dict[str, Any]:
        """The choice of answer `index`'s finishing chunk."""
        raise NotImplementedError

    def _send(self, choices: list[dict[str, Any]], opening: bool = False, **extra: Any) -> list[str]:
        chunk = {**self._head, "choices": choices, **extra}
        if not self._continuous:
            return [sse(chunk)]
        self._held.append((chunk, opening))
        return []

    def _flush(self, usage: Usage) -> list[str]:
        prompt_only = Usage(prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens)
        lines = [
            sse({**chunk, "usage": usage_json(prompt_only if opening else usage)}) for chunk, opening in self._held
        ]
        self._held.clear()
        return lines

    def _choice_end(self, index: int, reason: FinishReason) -> list[str]:
        if index not in self._open:
            return []
        self._open.remove(index)
        if not self._open:  # the last answer's finishing chunk waits for Finish: it carries `degraded`
            self._last_end = (index, reason)
            return []
        return self._send([self._finishing(index, FINISH_REASONS[reason])])

    def _finish(self, finish: Finish) -> list[str]:
        self._head["model"] = finish.model
        ends = [(i, finish.reason) for i in self._open] + ([self._last_end] if self._last_end else [])
        lines: list[str] = []
        for k, (index, reason) in enumerate(ends):
            extra = degraded_json(finish.degraded) if k == len(ends) - 1 else {}
            lines += self._send([self._finishing(index, FINISH_REASONS[reason])], **extra)
        lines += self._flush(self._usage)
        if self._include_usage:
            lines.append(sse({**self._head, "choices": [], "usage": usage_json(self._usage)}))
        return [*lines, DONE]
