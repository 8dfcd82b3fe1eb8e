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
    n: int = 1  # answers to the same prompt: one prefill, decoded in the same batches
    min_tokens: int = 0  # generated tokens before an end token may end it (stop strings still apply)
    ignore_eos: bool = False  # generate past the model's end tokens (benchmarks): only budgets and stops end it
    skip_special_tokens: bool = True  # special tokens are left out of the text
    # With a RawPrompt: the log probability of each prompt token, and this many alternatives
    # at each position (0-20). None: not computed (the prefix cache may then serve the prompt).
    prompt_logprobs: int | None = None
    speculative: bool = True  # False: no tokens are proposed for this request, whatever its pool does


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
class RawPrompt:
    """A plain-text completion's prompt, sent to the model as is (no chat template): `text`,
    tokenized by the model's tokenizer, or `token_ids`. Exactly one is set."""

    text: str | None = None
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    request_id: str
    messages: tuple[Message, ...]  # empty when `prompt` is set
    model: str = ""  # empty: the default model
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    mode: ModeParams = field(default_factory=ModeParams)
    identity: Identity = field(default_factory=Identity)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    deadline_unix_s: float | None = None  # the client's own deadline (gRPC's), wall clock; None: the server's
    prompt: RawPrompt | None = None  # a plain completion: instant mode, no messages, tools or format
    # Conversation state: `messages` continue the stored response `previous_response_id` (its
    # input and output come first); with `store`, this answer is kept for a follow-up.
    previous_response_id: str = ""
    store: bool = False
    instructions: str = ""  # a system message for this turn only: never stored with the conversation
    # With `store`: the API edge's own record of the request's settings (JSON, e.g. the Responses
    # API's tools, text format and metadata), kept verbatim with the answer for a read-back.
    stored_echo: str = ""
    usage_in_stream: bool = False  # a RunningUsage event after each step's events
    # A LoRA adapter of the model's pool, by name; empty: the caller's default for that pool, if any.
    adapter: str = ""


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


# `index`: the answer (choice) an event belongs to when a request asks for n > 1; else 0.


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str
    index: int = 0


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
    index: int = 0


@dataclass(frozen=True, slots=True)
class PromptLogprobs:
    """Every prompt token with its log probability given the tokens before it (the first
    token's is NaN: nothing precedes it). Sent once, before any delta, when asked for."""

    positions: tuple[PositionLogprobs, ...]


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    call: ToolCall
    index: int = 0


@dataclass(frozen=True, slots=True)
class ChoiceEnd:
    """One of n > 1 answers ended (the request's Finish still follows the last one)."""

    index: int
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class RunningUsage:
    """The tokens so far (`ChatRequest.usage_in_stream`); the final Usage still follows."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class AgentProgress:
    agent_index: int
    generated_tokens: int
    done: bool


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason  # with n > 1: the first answer's (each one's is in its ChoiceEnd)
    model: str  # the pool that served the request
    degraded: str = ""  # how the request was made cheaper under overload (e.g. "thinking_budget=256"); "": it was not
    response_id: str = ""  # with ChatRequest.store: the id a follow-up names as previous_response_id


StreamEvent = (
    TextDelta
    | ReasoningDelta
    | LogprobsDelta
    | PromptLogprobs
    | ToolCallEvent
    | ChoiceEnd
    | RunningUsage
    | AgentProgress
    | Usage
    | Finish
)


@dataclass(frozen=True, slots=True)
class ChatChoice:
    """One answer of a request with n > 1."""

    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    logprobs: tuple[PositionLogprobs, ...] = ()


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
    prompt_logprobs: tuple[PositionLogprobs, ...] = ()  # see PromptLogprobs
    response_id: str = ""  # see Finish.response_id
    choices: tuple[ChatChoice, ...] = ()  # with n > 1: every answer, in order (the fields above are the first's)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    context_length: int  # the pool's context window (`config.context_window`), not just the configured length
    max_output_tokens: int  # the configured cap, clamped below the window
    modes: tuple[Mode, ...]
    adapters: tuple[str, ...] = ()  # the pool's adapters the asking caller may use, sorted
