"""Domain stream events -> the Responses API's typed server-sent events.

Each event is `event: <type>` and `data: <json>` with a `sequence_number` counting from 0:

    response.created, response.in_progress                  the response, in progress, no output
    per output item, in the order the answer produces them:
      reasoning:  output_item.added, content_part.added, reasoning_text.delta*, reasoning_text.done,
                  content_part.done, output_item.done
      message:    the same with output_text.delta* and output_text.done
      call:       output_item.added, function_call_arguments.delta (the whole arguments: a call
                  arrives whole), function_call_arguments.done, output_item.done
    response.completed or response.incomplete (max_output_tokens), with the whole response

A reasoning or message item opens with its first delta and closes when another item begins
or the answer ends. An error once the stream has begun ends it with `response.failed`, whose
response holds the output so far and the error. The output of a stream in the usual order
(reasoning, text, calls) equals `responses_output.output_items` of the same answer, ids
included, so a retrieve shows what was streamed.
"""

from __future__ import annotations

import json
from typing import Any

from museserve.api.openai.output import degraded_json
from museserve.api.openai.responses_output import (
    function_call_item,
    message_item,
    output_text_part,
    reasoning_item,
    response_json,
    status_of,
)
from museserve.domain import (
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from museserve.errors import ErrorCode, MuseError

_TERMINAL = {"completed": "response.completed", "incomplete": "response.incomplete"}


class ResponseEventStream:
    """One response's events as SSE text, in order; `model` is the requested one until the
    answer's Finish names the pool that served it."""

    def __init__(self, response_id: str, model: str, echo: dict[str, Any]):
        self._id = response_id
        self._model = model
        self._echo = echo
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # the output so far; an open item is last
        self._open: str | None = None  # "reasoning" or "message" while that item streams
        self._text: list[str] = []  # the open item's deltas
        self._usage = Usage()

    def start(self) -> list[str]:
        snapshot = response_json(self._id, self._model, "in_progress", [], self._echo)
        return [self._sse("response.created", response=snapshot), self._sse("response.in_progress", response=snapshot)]

    def event(self, event: StreamEvent) -> list[str]:
        match event:
            case ReasoningDelta(text):
                return self._delta("reasoning", text)
            case TextDelta(text):
                return self._delta("message", text)
            case ToolCallEvent(call):
                return [*self._close("completed"), *self._call(call)]
            case Usage():
                self._usage = event
            case Finish(reason, model, degraded):
                return self._finish(reason, model, degraded)
        return []  # log probabilities, agent progress, running usage: no Responses counterpart

    def failed(self, error: MuseError) -> list[str]:
        lines = self._close("incomplete")
        code = "rate_limit_exceeded" if error.code is ErrorCode.RESOURCE_EXHAUSTED else "server_error"
        detail = {"code": code, "message": str(error)}
        body = response_json(self._id, self._model, "failed", list(self._items), self._echo, self._usage, detail)
        return [*lines, self._sse("response.failed", response=body)]

    def _delta(self, kind: str, text: str) -> list[str]:
        lines = [] if self._open == kind else [*self._close("completed"), *self._start_item(kind)]
        self._text.append(text)
        where = {"item_id": self._items[-1]["id"], "output_index": len(self._items) - 1, "content_index": 0}
        if kind == "reasoning":
            return [*lines, self._sse("response.reasoning_text.delta", **where, delta=text)]
        return [*lines, self._sse("response.output_text.delta", **where, delta=text, logprobs=[])]

    def _start_item(self, kind: str) -> list[str]:
        index = len(self._items)
        if kind == "reasoning":
            item, part = reasoning_item(self._id, index, "", "in_progress"), {"type": "reasoning_text", "text": ""}
        else:
            item, part = message_item(self._id, index, "", "in_progress"), output_text_part("")
        item["content"] = []
        self._items.append(item)
        self._open, self._text = kind, []
        return [
            self._sse("response.output_item.added", output_index=index, item=item),
            self._sse("response.content_part.added", item_id=item["id"], output_index=index, content_index=0,
                      part=part),
        ]  # fmt: skip

    def _close(self, status: str) -> list[str]:
        if self._open is None:
            return []
        index, text = len(self._items) - 1, "".join(self._text)
        where = {"item_id": self._items[index]["id"], "output_index": index, "content_index": 0}
        if self._open == "reasoning":
            item = reasoning_item(self._id, index, text, status)
            done = self._sse("response.reasoning_text.done", **where, text=text)
        else:
            item = message_item(self._id, index, text, status)
            done = self._sse("response.output_text.done", **where, text=text, logprobs=[])
        self._items[index] = item
        self._open = None
        return [
            done,
            self._sse("response.content_part.done", **where, part=item["content"][0]),
            self._sse("response.output_item.done", output_index=index, item=item),
        ]

    def _call(self, call: ToolCall) -> list[str]:
        index = len(self._items)
        item = function_call_item(self._id, index, call, call.arguments_json, "completed")
        self._items.append(item)
        where = {"item_id": item["id"], "output_index": index}
        return [
            self._sse("response.output_item.added", output_index=index,
                      item=function_call_item(self._id, index, call, "", "in_progress")),
            self._sse("response.function_call_arguments.delta", **where, delta=call.arguments_json),
            self._sse("response.function_call_arguments.done", **where, arguments=call.arguments_json),
            self._sse("response.output_item.done", output_index=index, item=item),
        ]  # fmt: skip

    def _finish(self, reason: FinishReason, model: str, degraded: str) -> list[str]:
        self._model = model
        last = "incomplete" if reason is FinishReason.LENGTH else "completed"
        lines = self._close(last)
        if not self._items:  # nothing at all: an empty message, as a whole answer has
            lines += [*self._start_item("message"), *self._close(last)]
        status = status_of(reason)
        body = response_json(self._id, model, status, list(self._items), self._echo, self._usage)
        terminal = _TERMINAL.get(status, "response.failed")
        return [*lines, self._sse(terminal, response={**body, **degraded_json(degraded)})]

    def _sse(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"
