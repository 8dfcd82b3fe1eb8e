"""Response schemas of the Responses API routes, for the OpenAPI document.

As for chat (`responses.py`, the chat completion's models): the handlers build plain JSON
(`responses_output`, `responses_stream`); the unit tests validate it against these models and
the official client's types, so the document cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from museserve.api.openai.responses import OPENAI_ERRORS

Status = Literal["completed", "incomplete", "in_progress", "failed", "cancelled"]
ItemStatus = Literal["completed", "incomplete", "in_progress"]


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any] | None = None


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"]
    text: str


class MessageOut(BaseModel):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: ItemStatus
    content: list[OutputText]


class ReasoningOut(BaseModel):
    id: str
    type: Literal["reasoning"]
    summary: list[Any]
    content: list[ReasoningText]
    status: ItemStatus


class FunctionCallOut(BaseModel):
    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int  # reasoning and answer tokens
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    id: str = Field(description="resp_ and 32 hex digits; with store, what previous_response_id names.")
    object: Literal["response"]
    created_at: int
    status: Status
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    model: str
    output: list[MessageOut | ReasoningOut | FunctionCallOut]
    usage: ResponseUsage | None
    instructions: str | None
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    text: dict[str, Any]
    reasoning: dict[str, Any]
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str]
    previous_response_id: str | None
    store: bool
    parallel_tool_calls: bool
    truncation: Literal["disabled"]
    background: bool
    user: str | None = None
    degraded: str | None = Field(None, description="How an overloaded model served the request more cheaply.")


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class InputItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]] = Field(description="Input items: message, function_call, function_call_output.")
    first_id: str
    last_id: str
    has_more: bool


_STREAM = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "`event: <type>` / `data: <event>` pairs: response.created ... response.completed",
        }
    }
}
CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": _STREAM}, **OPENAI_ERRORS}
STORED_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OPENAI_ERRORS,
    404: {**OPENAI_ERRORS[404], "description": "No such stored response (expired, deleted or another tenant's)"},
}
