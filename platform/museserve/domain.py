"""Domain types shared by every tier.

The gRPC and HTTP edges convert their wire messages into these and back; nothing below
the edge imports generated protobuf code. All types are frozen: a request is a value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Mode(enum.StrEnum):
    INSTANT = "instant"
    THINKING = "thinking"
    CONTEMPLATING = "contemplating"


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_output_tokens or the context window was reached
    TOOL_CALLS = "tool_calls"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """Exactly one of `data` and `url` is set."""

    data: bytes | None = None
    url: str | None = None
    mime_type: str = ""


@dataclass(frozen=True, slots=True)
class AudioPart:
    data: bytes
    format: str  # "wav" or "flac"


ContentPart = TextPart | ImagePart | AudioPart


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    parts: tuple[ContentPart, ...] = ()
    name: str = ""
    tool_call_id: str = ""  # set on TOOL messages: the call this message answers
    tool_calls: tuple[ToolCall, ...] = ()  # set on ASSISTANT messages that called tools

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters_json_schema: str  # a JSON Schema object, serialised


class ToolChoiceKind(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    kind: ToolChoiceKind = ToolChoiceKind.AUTO
    name: str = ""  # only with NAMED


class ResponseFormatKind(enum.StrEnum):
    TEXT = "text"
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The answer's shape. JSON kinds constrain decoding so the answer always parses."""

    kind: ResponseFormatKind = ResponseFormatKind.TEXT
    json_schema: str = ""  # only with JSON_SCHEMA: a JSON Schema, serialised
    strict: bool = True  # JSON_SCHEMA: objects admit no properties the schema does not name


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 disable those filters. None: the model's
    default (its checkpoint's generation config), else temperature 1, no top-p, top-k or penalty."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_output_tokens: int | None = None  # None: the pool's default
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None  # 1.0 is off
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per position, with logprobs


@dataclass(frozen=True, slots=True)
class ModeParams:
    mode: Mode = Mode.INSTANT
    thinking_budget: int | None = None  # reasoning tokens; None: the pool's default
    num_agents: int | None = None  # CONTEMPLATING only; None: the pool's default


@dataclass(frozen=True, slots=True)
class Identity:
    """Who sent a request. Filled in by the gateway from metadata, never by the client body."""

    tenant: str = "anonymous"
    user: str = ""
    tier: str = "default"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    request_id: str
    messages: tuple[Message, ...]
    model: str = ""  # empty: the default model
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    mode: ModeParams = field(default_factory=ModeParams)
    identity: Identity = field(default_factory=Identity)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    deadline_unix_s: float | None = None  # the client's own deadline (gRPC's), wall clock; None: the server's


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    reasoning_tokens: int = 0
    output_tokens: int = 0  # answer tokens, reasoning excluded

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.reasoning_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.cached_tokens + other.cached_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.output_tokens + other.output_tokens,
        )


# Stream events, in the order a client sees them: deltas, then Usage, then Finish.


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    token_id: int
    logprob: float


@dataclass(frozen=True, slots=True)
class PositionLogprobs:
    chosen: TokenLogprob
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class LogprobsDelta:
    positions: tuple[PositionLogprobs, ...]


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    call: ToolCall


@dataclass(frozen=True, slots=True)
class AgentProgress:
    agent_index: int
    generated_tokens: int
    done: bool


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason
    model: str  # the pool that served the request
    degraded: str = ""  # how the request was made cheaper under overload (e.g. "thinking_budget=256"); "": it was not


StreamEvent = TextDelta | ReasoningDelta | LogprobsDelta | ToolCallEvent | AgentProgress | Usage | Finish


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole answer: what unary Chat returns, folded from the stream."""

    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    finish_reason: FinishReason
    model: str
    logprobs: tuple[PositionLogprobs, ...] = ()
    degraded: str = ""  # see Finish.degraded


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    context_length: int  # the pool's context window (`config.context_window`), not just the configured length
    max_output_tokens: int  # the configured cap, clamped below the window
    modes: tuple[Mode, ...]
