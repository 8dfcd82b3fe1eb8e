"""Answers -> the Responses API's `response` object, its output items and usage.

An answer is a fresh `ChatResult` or a `StoredResponse` read back; both give the same JSON,
so a retrieve equals the create that stored it. Output, in order: a `reasoning` item (the
reasoning whole, as `reasoning_text` content) when there was reasoning, a `message` item with
the text, then one `function_call` item per call; an answer with none of these has an empty
message. Item ids derive from the response id and the item's place, so they are stable.
The request's own settings (`echo`) are shown as they were sent; the tests check the JSON
against the official client's types.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from museserve.api.openai import responses_schemas as s
from museserve.api.openai.model_names import parse_model_name
from museserve.api.openai.output import degraded_json
from museserve.domain import FinishReason, ToolCall, Usage


class Answer(Protocol):
    """What a `ChatResult` and a `StoredResponse` both have."""

    @property
    def text(self) -> str: ...
    @property
    def reasoning(self) -> str: ...
    @property
    def tool_calls(self) -> tuple[ToolCall, ...]: ...
    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def usage(self) -> Usage: ...
    @property
    def model(self) -> str: ...


def request_echo(body: s.ResponseCreateRequest, created_at: float) -> dict[str, Any]:
    """The response's fields fixed when the request arrived: its time and the request's
    settings as sent (a stored response keeps them, so a retrieve shows the same). A model
    naming a LoRA adapter is one of them: the response names it as sent (`model_names`)."""
    text: dict[str, Any] = {"format": {"type": "text"}}
    if body.text is not None and body.text.format is not None:
        text["format"] = body.text.format.model_dump(by_alias=True, exclude_none=True)
    if body.text is not None and body.text.verbosity is not None:
        text["verbosity"] = body.text.verbosity
    reasoning = body.reasoning
    return {
        "created_at": math.floor(created_at),
        "instructions": body.instructions,
        "tools": [_tool_json(t) for t in body.tools or () if isinstance(t, s.FunctionTool)],
        "tool_choice": _tool_choice_json(body.tool_choice),
        "text": text,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "max_output_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "metadata": dict(body.metadata or {}),
        "previous_response_id": body.previous_response_id or None,
        "store": body.store is not False,
        "user": body.user,
        **({"model": body.model} if parse_model_name(body.model).adapter else {}),
    }


def default_echo(created_at: float, instructions: str, previous_response_id: str) -> dict[str, Any]:
    """The fields of a response stored without an echo (over gRPC): the API's defaults."""
    return {
        "created_at": math.floor(created_at),
        "instructions": instructions or None,
        "tools": [],
        "tool_choice": "auto",
        "text": {"format": {"type": "text"}},
        "reasoning": {"effort": None, "summary": None},
        "metadata": {},
        "previous_response_id": previous_response_id or None,
        "store": True,
    }


def _tool_json(t: s.FunctionTool) -> dict[str, Any]:
    parameters = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
    # Calls always follow the schema, so every function tool is strict here.
    return {"type": "function", "name": t.name, "description": t.description, "parameters": parameters, "strict": True}


def _tool_choice_json(choice: str | s.FunctionChoice | s.HostedTool | None) -> str | dict[str, Any]:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    return {"type": "function", "name": choice.name} if isinstance(choice, s.FunctionChoice) else "auto"


def status_of(reason: FinishReason) -> str:
    if reason is FinishReason.LENGTH:
        return "incomplete"
    return "cancelled" if reason is FinishReason.CANCELLED else "completed"


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}_{output_index}"


def reasoning_item(response_id: str, index: int, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}]
    return {"id": item_id("rs", response_id, index), "type": "reasoning", "summary": [], "content": content,
            "status": status}  # fmt: skip


def message_item(response_id: str, index: int, text: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id("msg", response_id, index),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [output_text_part(text)],
    }


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(response_id: str, index: int, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id("fc", response_id, index),
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def output_items(response_id: str, answer: Answer) -> list[dict[str, Any]]:
    """A reasoning or message item that ends the output is incomplete when the answer was cut
    short (max_output_tokens); a call is always whole."""
    kinds: list[tuple[str, Any]] = []
    if answer.reasoning:
        kinds.append(("reasoning", answer.reasoning))
    if answer.text or not (answer.reasoning or answer.tool_calls):
        kinds.append(("message", answer.text))
    kinds += [("call", call) for call in answer.tool_calls]
    items = []
    for i, (kind, value) in enumerate(kinds):
        cut = i == len(kinds) - 1 and kind != "call" and answer.finish_reason is FinishReason.LENGTH
        status = "incomplete" if cut else "completed"
        if kind == "reasoning":
            items.append(reasoning_item(response_id, i, value, status))
        elif kind == "message":
            items.append(message_item(response_id, i, value, status))
        else:
            items.append(function_call_item(response_id, i, value, value.arguments_json, status))
    return items


def usage_json(u: Usage) -> dict[str, Any]:
    output = u.reasoning_tokens + u.output_tokens
    return {
        "input_tokens": u.prompt_tokens,
        # cache_write_tokens: OpenAI's explicit cache writes; museserve bills none.
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + output,
    }


def response_json(
    response_id: str,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    echo: dict[str, Any],
    usage: Usage | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The response object; `status` in_progress has no usage yet. `echo`: see `request_echo`."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage_json(usage) if usage is not None else None,
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "background": False,
        **echo,  # last: an echoed `model` (one naming an adapter) is the one shown
    }


def answer_json(response_id: str, answer: Answer, echo: dict[str, Any], degraded: str = "") -> dict[str, Any]:
    status = status_of(answer.finish_reason)
    body = response_json(response_id, answer.model, status, output_items(response_id, answer), echo, answer.usage)
    return {**body, **degraded_json(degraded)}
