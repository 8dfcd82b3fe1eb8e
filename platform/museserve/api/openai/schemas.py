"""The request body of `POST /v1/chat/completions`: only what museserve serves.

Fields the official client may send that change nothing here (`metadata`, `store`,
`service_tier`, ...) are accepted and ignored; fields museserve cannot honour
(`audio`, `functions`, `logit_bias`, ...) are declared so the refusal names them; any other
field is refused by `extra="forbid"`, so a client never silently loses a setting.
Bounds mirror the proto's integer widths, so no value can overflow a tier below.
vLLM's sampling extensions (`top_k`, `min_tokens`, `ignore_eos`, ...) keep vLLM's names.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @field_validator("*", mode="after")
    @classmethod
    def _utf8_only(cls, value: Any) -> Any:
        """JSON can carry lone UTF-16 surrogates (`"\\ud800"`); no tier below can encode them."""
        for text in value if isinstance(value, list) else (value,):
            if isinstance(text, str) and not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("text must be valid Unicode (a lone surrogate was sent)") from None
        return value


class TextContent(Strict):
    type: Literal["text"]
    text: str


class ImageURL(Strict):
    url: str = Field(description="An http(s) URL (where policy allows) or a data: URL with base64 bytes.")
    detail: Literal["auto", "low", "high"] | None = Field(None, description="Accepted and ignored.")


class ImageContent(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Strict):
    data: str = Field(description="Base64-encoded audio file bytes.")
    format: Literal["wav", "flac"]


class AudioContent(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class RefusalContent(Strict):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[TextContent | ImageContent | AudioContent, Field(discriminator="type")]
AssistantContentPart = Annotated[TextContent | RefusalContent, Field(discriminator="type")]


class FunctionCall(Strict):
    name: str
    arguments: str = Field(description="The arguments as a JSON object, serialised.")


class ToolCallIn(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: str | list[TextContent]
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | list[AssistantContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    # What a client echoes back from an earlier response; ignored.
    refusal: str | None = None
    reasoning_content: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: None = None
    function_call: None = None


class ToolMessage(Strict):
    role: Literal["tool"]
    content: str | list[TextContent]
    tool_call_id: str


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionSpec(Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema object.")
    strict: bool | None = Field(None, description="Accepted; tool calls always follow the schema.")


class Tool(Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(Strict):
    type: Literal["text"]


class JsonObjectFormat(Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(Strict):
    include_usage: bool | None = Field(None, description="A last chunk, with no choices, carries the usage.")
    continuous_usage_stats: bool | None = Field(
        None, description="vLLM's: every chunk carries `usage` with the token counts so far."
    )
    include_obfuscation: bool | None = Field(None, description="Accepted and ignored.")


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
# The schema's bound is the most `gateway.limits.max_choices` may allow; the gateway refuses
# more than the configured limit (16 by default): each answer holds a batch slot and KV blocks.
Choices = Annotated[int, Field(ge=1, le=128)]
N_DESCRIPTION = "Answers to the prompt (one prefill, decoded together): at most gateway.limits.max_choices (16)."

# Fields of OpenAI's API that museserve refuses when set (not null, not empty).
UNSUPPORTED_FIELDS = (
    "audio",
    "modalities",
    "functions",
    "function_call",
    "logit_bias",
    "prediction",
    "web_search_options",
    "moderation",
)


class ChatCompletionRequest(Strict):
    messages: list[Message] = Field(min_length=1)
    model: str = Field(
        description="A served model (GET /v1/models), optionally with a mode (`muse-tiny:thinking`) or a LoRA "
        "adapter (`muse-tiny:support`, as GET /v1/models lists it)."
    )
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = Field(None, description="Answer tokens.")
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = Field(
        None, description="Answer tokens; reasoning is bounded by thinking_budget (or reasoning_effort)."
    )
    seed: Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    n: Choices | None = Field(None, description=N_DESCRIPTION)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = Field(None, description="Accepted; the model may call several tools.")
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = Field(
        None, description="none: instant mode; otherwise thinking with a budget (see README)."
    )
    user: str | None = Field(None, description="The end user, when no x-user-id header is sent.")
    # museserve's own fields (the official client sends them through `extra_body`).
    mode: Literal["instant", "thinking", "contemplating"] | None = None
    thinking_budget: Count | None = Field(None, description="Reasoning tokens allowed.")
    num_agents: Count | None = Field(None, description="Parallel reasoners in contemplating mode.")
    top_k: Count | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    # vLLM's sampling extensions.
    min_tokens: Count | None = Field(None, description="Tokens generated before an end token may end the answer.")
    ignore_eos: bool | None = Field(None, description="Generate past end tokens: only max_tokens and stop end it.")
    skip_special_tokens: bool | None = Field(None, description="Leave special tokens out of the text (default true).")
    speculative: Literal["auto", "off"] | None = Field(
        None, description="off: no speculative decoding for this request (auto: as the model's pool is configured)."
    )
    # Accepted and ignored: they change nothing about the answer.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    # Refused when set: see UNSUPPORTED_FIELDS.
    audio: Any = Field(None, description="Not supported: audio output.")
    modalities: list[str] | None = Field(None, description='Only ["text"].')
    functions: Any = Field(None, description="Not supported: use tools.")
    function_call: Any = Field(None, description="Not supported: use tool_choice.")
    logit_bias: dict[str, int] | None = Field(None, description="Not supported.")
    prediction: Any = Field(None, description="Not supported.")
    web_search_options: Any = Field(None, description="Not supported.")
    moderation: Any = Field(None, description="Not supported.")
