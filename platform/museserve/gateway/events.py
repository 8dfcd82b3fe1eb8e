"""A pool's chunks as the gateway's stream events, and those events folded into one result.

Events in order: `PromptLogprobs` (when asked for), then per chunk its deltas (each naming
its answer's `index`), a `ChoiceEnd` when one of n > 1 answers ends, a `RunningUsage` when
the request asked for usage in the stream; at the end one `Usage` and one `Finish`.
"""

from __future__ import annotations

from museserve.domain import (
    ChatChoice,
    ChatResult,
    ChoiceEnd,
    Finish,
    FinishReason,
    LogprobsDelta,
    PositionLogprobs,
    PromptLogprobs,
    ReasoningDelta,
    RunningUsage,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from museserve.messages import GenerationChunk, PreparedRequest


class StreamEvents:
    """One request's chunks -> events; keeps the running token counts for `RunningUsage`."""

    def __init__(self, prepared: PreparedRequest, pool: str, degraded: str, usage_in_stream: bool):
        self._prepared = prepared
        self._pool = pool
        self._degraded = degraded
        self._usage_in_stream = usage_in_stream
        self._generated = 0
        self.response_id = ""  # set by the gateway before the last chunk's events are taken

    def of(self, chunk: GenerationChunk) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        i = chunk.choice
        if chunk.prompt_logprobs:
            events.append(PromptLogprobs(chunk.prompt_logprobs))
        events.extend(chunk.agent_progress)
        if chunk.reasoning:
            events.append(ReasoningDelta(chunk.reasoning, i))
        if chunk.text:
            events.append(TextDelta(chunk.text, i))
        events.extend(ToolCallEvent(call, i) for call in chunk.tool_calls)
        if chunk.logprobs:
            events.append(LogprobsDelta(chunk.logprobs, i))
        if chunk.choice_finish is not None:
            events.append(ChoiceEnd(i, chunk.choice_finish))
        self._generated += chunk.num_new_tokens
        if self._usage_in_stream and chunk.finish is None and chunk.num_new_tokens:
            prompt = self._prepared.num_prompt_tokens
            events.append(RunningUsage(Usage(prompt_tokens=prompt, output_tokens=self._generated)))
        if chunk.finish is not None:
            events.append(chunk.usage or Usage(prompt_tokens=self._prepared.num_prompt_tokens))
            events.append(Finish(chunk.finish, self._pool, self._degraded, self.response_id))
        return events


class ResultFold:
    """Events -> the `ChatResult` unary Chat returns (and a stored conversation keeps)."""

    def __init__(self) -> None:
        self._text: dict[int, list[str]] = {}
        self._reasoning: dict[int, list[str]] = {}
        self._calls: dict[int, list[ToolCall]] = {}
        self._logprobs: dict[int, list[PositionLogprobs]] = {}
        self._ends: dict[int, FinishReason] = {}
        self._prompt_logprobs: tuple[PositionLogprobs, ...] = ()
        self._usage = Usage()
        self._finish: Finish | None = None

    def add(self, event: StreamEvent) -> None:
        match event:
            case TextDelta(text, i):
                self._text.setdefault(i, []).append(text)
            case ReasoningDelta(text, i):
                self._reasoning.setdefault(i, []).append(text)
            case ToolCallEvent(call, i):
                self._calls.setdefault(i, []).append(call)
            case LogprobsDelta(positions, i):
                self._logprobs.setdefault(i, []).extend(positions)
            case PromptLogprobs(positions):
                self._prompt_logprobs = positions
            case ChoiceEnd(i, reason):
                self._ends[i] = reason
            case Usage():
                self._usage = event
            case Finish():
                self._finish = event

    def result(self) -> ChatResult:
        finish = self._finish or Finish(FinishReason.STOP, "")
        choices = tuple(self._choice(i, finish.reason) for i in sorted(self._ends)) if self._ends else ()
        first = choices[0] if choices else self._choice(0, finish.reason)
        return ChatResult(
            first.text,
            first.reasoning,
            first.tool_calls,
            self._usage,
            first.finish_reason,
            finish.model,
            first.logprobs,
            finish.degraded,
            self._prompt_logprobs,
            finish.response_id,
            choices,
        )

    def _choice(self, i: int, default: FinishReason) -> ChatChoice:
        return ChatChoice(
            "".join(self._text.get(i, ())),
            "".join(self._reasoning.get(i, ())),
            tuple(self._calls.get(i, ())),
            self._ends.get(i, default),
            tuple(self._logprobs.get(i, ())),
        )
