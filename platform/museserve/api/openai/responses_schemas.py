"""The request body of `POST /v1/responses`: only what museserve serves.

As for chat (`schemas`): fields that change nothing here are accepted and ignored, fields
museserve cannot honour are declared so the refusal names them (RESPONSES_UNSUPPORTED, and
values refused in `responses_convert`), and any other field is refused by `extra="forbid"`.
Input items are in `responses_input`; its capitalised union tags are used here too.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Tag, field_validator

from museserve.api.openai.responses_input import InputItem, type_tag
from museserve.api.openai.schemas import INT32_MAX, Count, Probability, Strict

MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512


class FunctionTool(Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema object.")
    strict: bool | None = Field(None, description="Accepted; tool calls always follow the schema.")


class HostedTool(BaseModel):
    """Any other tool type (web_search, file_search, mcp, ...): refused by name."""

    model_config = ConfigDict(extra="allow")
    type: str


Tool = Annotated[
    Annotated[FunctionTool, Tag("Function")] | Annotated[HostedTool, Tag("Other")],
    type_tag({"function": "Function"}, "", other="Other"),
]


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


ToolChoice = Annotated[
    Annotated[FunctionChoice, Tag("Function")] | Annotated[HostedTool, Tag("Other")],
    type_tag({"function": "Function"}, "", other="Other"),
]


class TextFormatText(Strict):
    type: Literal["text"]


class TextFormatJsonObject(Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(Strict):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    Annotated[TextFormatText, Tag("Text")]
    | Annotated[TextFormatJsonObject, Tag("JsonObject")]
    | Annotated[TextFormatJsonSchema, Tag("JsonSchema")],
    type_tag({"text": "Text", "json_object": "JsonObject", "json_schema": "JsonSchema"}, ""),
]


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = Field(None, description="Accepted and ignored.")


class ReasoningConfig(Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = Field(
        None, description="none: instant mode; otherwise thinking with a budget (max: the model's output limit)."
    )
    summary: Literal["auto", "concise", "detailed"] | None = Field(
        None, description="Accepted; the reasoning is returned whole, as reasoning_text."
    )
    generate_summary: Literal["auto", "concise", "detailed"] | None = Field(None, description="As summary.")


class StreamOptions(Strict):
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored.")


# Fields of OpenAI's API that museserve refuses when set (not null, false, 0 or empty).
RESPONSES_UNSUPPORTED = (
    "background",
    "background_options",
    "conversation",
    "prompt",
    "include",
    "max_tool_calls",
    "top_logprobs",
    "context_management",
    "moderation",
    "access_programs",
    "image",
)


class ResponseCreateRequest(Strict):
    input: str | list[InputItem] = Field(description="A user message, or a list of input items.")
    model: str = Field(
        "",
        description="A served model, optionally with a mode (`muse-tiny:thinking`) or a LoRA adapter "
        "(`muse-tiny:support`, as GET /v1/models lists it); empty: the default.",
    )
    instructions: str | None = Field(None, description="A system message for this response only; never carried over.")
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = Field(
        None, description="Answer tokens; reasoning is bounded by thinking_budget (or reasoning.effort)."
    )
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    store: bool | None = Field(None, description="Keep the response for retrieval and follow-ups (default true).")
    previous_response_id: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[str, str] | None = Field(None, description="Up to 16 pairs, kept with a stored response.")
    user: str | None = Field(None, description="The end user, when no x-user-id header is sent.")
    parallel_tool_calls: bool | None = Field(None, description="Only true: the model may call several tools.")
    truncation: Literal["auto", "disabled"] | None = Field(None, description='Only "disabled".')
    # museserve's own fields (the official client sends them through `extra_body`).
    mode: Literal["instant", "thinking", "contemplating"] | None = None
    thinking_budget: Count | None = Field(None, description="Reasoning tokens allowed.")
    num_agents: Count | None = Field(None, description="Parallel reasoners in contemplating mode.")
    # Accepted and ignored: they change nothing about the answer.
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    # Refused when set: see RESPONSES_UNSUPPORTED.
    background: bool | None = Field(None, description="Not supported: responses are answered in the request.")
    background_options: Any = Field(None, description="Not supported.")
    conversation: Any = Field(None, description="Not supported: use previous_response_id.")
    prompt: Any = Field(None, description="Not supported: saved prompts.")
    include: list[str] | None = Field(None, description="Not supported.")
    max_tool_calls: int | None = Field(None, description="Not supported: no built-in tools.")
    top_logprobs: int | None = Field(None, description="Not supported.")
    context_management: Any = Field(None, description="Not supported.")
    moderation: Any = Field(None, description="Not supported.")
    access_programs: Any = Field(None, description="Not supported.")
    image: Any = Field(None, description="Not supported.")

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs")
        for key, text in value.items():
            if len(key) > MAX_METADATA_KEY or len(text) > MAX_METADATA_VALUE:
                raise ValueError(f"keys hold at most {MAX_METADATA_KEY} characters, values {MAX_METADATA_VALUE}")
            Strict._utf8_only([key, text])  # kept and echoed: no lone surrogates
        return value
