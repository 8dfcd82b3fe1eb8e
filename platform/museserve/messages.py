"""Messages between tiers: gateway -> preprocess -> model pool -> gateway.

Small, picklable, frozen values. A `PreparedRequest` is everything a model pool needs:
limits are resolved and checked before it exists, so a pool never refuses one for a
reason the client could have been told earlier.
"""

from __future__ import annotations

from dataclasses import dataclass

from museserve.domain import (
    AgentProgress,
    FinishReason,
    Mode,
    PositionLogprobs,
    ResponseFormat,
    SamplingParams,
    ToolCall,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
    Usage,
)


@dataclass(frozen=True, slots=True)
class MediaSegment:
    """An image or audio clip in the prompt: `num_tokens` placeholder ids (`<|image|>` or
    `<|audio|>`) at `prompt_token_ids[start : start + num_tokens]`, whose embeddings the model
    replaces with its projection of `features`.

    `features` holds float16 rows, row-major, shape [num_tokens, feature_dim] (image patches
    or stacked log-mel frames). `digest` is the SHA-256 of the decoded media: the prefix
    cache hashes it with the block's tokens, so equal placeholders over different media
    never share KV blocks.
    """

    kind: str  # "image" or "audio"
    start: int
    num_tokens: int
    feature_dim: int
    features: bytes
    digest: str


@dataclass(frozen=True, slots=True)
class ContemplationPrompts:
    """The passes of a Contemplating request, rendered by the preprocess tier in the pool's chat
    format. Every pass starts with `shared` (the conversation: the prefix cache computes it once);
    agent i's prompt is `shared + agents[i]`; the synthesis prompt is `shared + synthesis[0]`, the
    agents' answers encoded as plain text, then `synthesis[1]`. Media lie inside `shared`."""

    shared: tuple[int, ...]
    agents: tuple[tuple[int, ...], ...]
    synthesis: tuple[tuple[int, ...], tuple[int, ...]]
    synthesis_thinking_budget: int  # the synthesis pass's reasoning tokens; its prompt opens the segment if > 0


# SamplingParams fields that may be None in a client's request and never in a prepared one.
RESOLVED_SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    request_id: str
    tenant: str
    pool: str
    prompt_token_ids: tuple[int, ...]
    mode: Mode
    thinking_budget: int  # reasoning tokens allowed; 0 when the mode does not reason
    # Resolved: every field set (the model's defaults filled in); max_output_tokens is the
    # answer's budget, reasoning excluded.
    sampling: SamplingParams
    deadline_unix_s: float  # wall clock: processes on different hosts share no monotonic clock
    priority: int = 0  # from the account tier; lower is scheduled first
    # The tier's TTFT objective as a wall-clock time (`TierConfig.drop_late`): a request still queued
    # when its first token can no longer come by then is ended before its prefill. 0.0: none.
    first_token_by_unix_s: float = 0.0
    media: tuple[MediaSegment, ...] = ()  # in prompt order, not overlapping
    tools: tuple[ToolSpec, ...] = ()  # offered to the model; empty when tool_choice is NONE
    tool_choice: ToolChoice = ToolChoice(ToolChoiceKind.NONE)
    response_format: ResponseFormat = ResponseFormat()
    num_agents: int = 0  # CONTEMPLATING: parallel agents; 0 for the other modes
    contemplation: ContemplationPrompts | None = None  # CONTEMPLATING: every pass's prompt
    adapter: str = ""  # the pool's LoRA adapter applied to every pass ("": the base model)

    def __post_init__(self) -> None:
        unset = [name for name in RESOLVED_SAMPLING if getattr(self.sampling, name) is None]
        if unset:
            raise ValueError(f"a prepared request needs resolved sampling; unset: {', '.join(unset)}")

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def max_output_tokens(self) -> int:
        return self.sampling.max_output_tokens  # type: ignore[return-value]  # set: __post_init__


@dataclass(frozen=True, slots=True)
class PromptCount:
    prompt_tokens: int
    context_length: int
    pool: str


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """What a model pool streams: deltas coalesced over a short window.

    The last chunk of a request carries `finish` and `usage`; no chunk follows it. With n > 1
    (`ParallelChoices`) every chunk names its `choice`, each answer's last one carries its
    `choice_finish`, and a last chunk of its own carries `finish` and the summed usage.
    """

    text: str = ""
    reasoning: str = ""
    logprobs: tuple[PositionLogprobs, ...] = ()  # of the answer tokens behind `text`
    tool_calls: tuple[ToolCall, ...] = ()  # complete calls, in the order the model made them
    agent_progress: tuple[AgentProgress, ...] = ()  # CONTEMPLATING: agents that moved since the last chunk
    num_new_tokens: int = 0
    finish: FinishReason | None = None
    usage: Usage | None = None
    # Of every prompt token, in the first chunk, when sampling.prompt_logprobs asks (`PromptLogprobs`).
    prompt_logprobs: tuple[PositionLogprobs, ...] = ()
    choice: int = 0
    choice_finish: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    """A replica's requests of one scheduling priority."""

    priority: int  # lower runs first
    running: int
    waiting: int
    waiting_tokens: int  # prompt tokens the waiting ones still have to prefill
    # Measured: arrival to first scheduled step of its recent requests, p90 (0.0: none lately).
    queue_p90_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What a model replica reports for routing and admission, every `routing.stats_period_s`.

    Rates are measured over the replica's recent past; 0.0 means not measured yet (an idle
    replica that has served nothing)."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of the KV blocks held by requests
    max_running: int = 0  # the engine's max_running_requests
    prefill_backlog_tokens: int = 0  # prompt tokens the running requests still have to prefill
    by_priority: tuple[PriorityLoad, ...] = ()  # ascending priority
    prefill_tokens_per_s: float = 0.0  # prompt tokens prefilled per second of steps that prefilled
    finishes_per_s: float = 0.0  # requests that left the batch per second
    step_s: float = 0.0  # mean duration of a recent step
    ttft_p90_s: float = 0.0  # time from arrival at the engine to the first token, recent p90
    taken_at: float = 0.0  # wall clock (time.time()) of the report
    adapters: tuple[str, ...] = ()  # LoRA adapters resident in the replica: requests for them need no load

    @property
    def requests(self) -> int:
        return self.running + self.waiting


@dataclass(frozen=True, slots=True)
class LiveOpened:
    """First item of a live request's stream from a pool deployment: the replica that holds it,
    where every `LiveExtension` of the request must go (`serve.prefix_router` pins them)."""

    replica: str  # Serve's replica unique id


@dataclass(frozen=True, slots=True)
class LiveExtension:
    """More prompt for a live request (`MuseEngine.extend`): speech tokens as they arrive, and
    with `close`, the turn's tail. Media starts are relative to the first of `token_ids`."""

    request_id: str
    replica: str
    token_ids: tuple[int, ...]
    media: tuple[MediaSegment, ...] = ()
    close: bool = False
