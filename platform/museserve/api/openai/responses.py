"""Response schemas of the OpenAI-compatible API, for the OpenAPI document.

The handlers build plain JSON in `output` (fast on the streaming path); the unit tests
validate that JSON against these models and the official client's types, so the
document cannot drift from what is sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Function(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: Function


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class Logprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessageOut
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int  # reasoning and answer tokens
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    degraded: str | None = Field(
        None,
        description="How an overloaded model served the request more cheaply (its tier's policy); absent: as asked.",
    )


class ToolCallDelta(ToolCallOut):
    index: int


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length", "tool_calls"] | None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a stream; the last is `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = Field(
        None, description="On the last chunk with include_usage; on every chunk with continuous_usage_stats."
    )
    degraded: str | None = Field(None, description="On the last finishing chunk: as ChatCompletion.degraded.")


class LegacyLogprobs(BaseModel):
    """One entry per token; the first prompt token (with echo) has no log probability: null."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="Each token's first character in the choice's text.")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: Literal["stop", "length"] | None = Field(description="Null on stream chunks until the answer ends.")


class Completion(BaseModel):
    """A `text_completion`: the answer of POST /v1/completions, and each `data:` event of its
    stream (the last is `data: [DONE]`)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = Field(
        None, description="Always on an answer; on a stream as on ChatCompletionChunk."
    )
    degraded: str | None = Field(None, description="As ChatCompletion.degraded.")


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int
    max_model_len: int
    max_output_tokens: int
    modes: list[Literal["instant", "thinking", "contemplating"]]
    is_default: bool
    parent: str | None = Field(
        None, description="On a LoRA adapter's entry (id `MODEL:ADAPTER`): its base model; absent on a base model."
    )


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_STREAM = {
    "text/event-stream": {
        "schema": {"type": "string", "description": "`data: <ChatCompletionChunk>` events, then `data: [DONE]`"}
    }
}
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request; `param` names the field"},
    401: {"model": ErrorResponse, "description": "Missing or unknown API key"},
    403: {"model": ErrorResponse, "description": "A LoRA adapter the caller may not use"},
    404: {"model": ErrorResponse, "description": "Unknown model, or an adapter the model does not have"},
    429: {"model": ErrorResponse, "description": "Rate limit or load shedding; see Retry-After"},
    500: {"model": ErrorResponse, "description": "Server fault"},
    503: {"model": ErrorResponse, "description": "Unavailable; may be retried"},
    504: {"model": ErrorResponse, "description": "Deadline exceeded"},
}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": _STREAM}, **OPENAI_ERRORS}
_COMPLETION_STREAM = {
    "text/event-stream": {
        "schema": {"type": "string", "description": "`data: <Completion>` events, then `data: [DONE]`"}
    }
}
COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": _COMPLETION_STREAM}, **OPENAI_ERRORS}
