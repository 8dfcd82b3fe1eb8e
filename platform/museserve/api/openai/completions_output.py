"""Domain results and stream events -> OpenAI `text_completion` objects (`/v1/completions`).

A choice's `text` is its answer, after the prompt with `echo`: the prompt string as sent, or
a token-id prompt's token strings (from the prompt's log probabilities; a token that splits
a character shows as U+FFFD). `logprobs` has the legacy shape: `tokens`, `token_logprobs`,
`top_logprobs` (`{token: logprob}`, the chosen token included, as vLLM's) and `text_offset`
(each token's first character in `text`, counted over the token strings), one entry per
token; the first prompt token has no log probability (nothing precedes it): null in both.

A stream: with echo, one chunk per answer holding the prompt (and its logprobs); then a
chunk per delta, its text with its tokens' logprobs; then the end `choice_stream` describes.
Stream chunks are `text_completion` objects too, with `finish_reason` null until the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from museserve.api.openai.choice_stream import FINISH_REASONS, ChoiceStream, degraded_json, usage_json
from museserve.api.openai.output import answers, json_logprob
from museserve.domain import (
    ChatRequest,
    ChatResult,
    LogprobsDelta,
    PositionLogprobs,
    PromptLogprobs,
    StreamEvent,
    TextDelta,
)


def completion_id(request_id: str) -> str:
    return f"cmpl-{request_id}"


@dataclass(frozen=True, slots=True)
class CompletionShape:
    """What a request asked of its answer's form, beyond the events."""

    echo: bool
    prompt_text: str | None  # a string prompt as sent; None: token ids
    logprobs: bool
    n: int = 1

    @classmethod
    def of(cls, request: ChatRequest, echo: bool) -> CompletionShape:
        text = request.prompt.text if request.prompt is not None else ""
        return cls(echo, text, request.sampling.logprobs, request.sampling.n)

    def echoed(self, prompt: Sequence[PositionLogprobs]) -> str:
        if not self.echo:
            return ""
        return self.prompt_text if self.prompt_text is not None else "".join(p.chosen.token for p in prompt)


def legacy_logprobs(positions: Sequence[PositionLogprobs], offset: int) -> dict[str, list[Any]]:
    """`offset`: the first token's character offset in the choice's text."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for p in positions:
        known = not math.isnan(p.chosen.logprob)  # NaN: the first prompt token
        top = {t.token: json_logprob(t.logprob) for t in p.top}
        top.setdefault(p.chosen.token, json_logprob(p.chosen.logprob))
        out["tokens"].append(p.chosen.token)
        out["token_logprobs"].append(json_logprob(p.chosen.logprob) if known else None)
        out["top_logprobs"].append(top if known else None)
        out["text_offset"].append(offset)
        offset += len(p.chosen.token)
    return out


def text_completion_json(result: ChatResult, request_id: str, shape: CompletionShape) -> dict[str, Any]:
    prefix = shape.echoed(result.prompt_logprobs)
    prompt = legacy_logprobs(result.prompt_logprobs if shape.echo else (), 0)
    choices = []
    for i, answer in enumerate(answers(result)):
        logprobs = None
        if shape.logprobs:
            tail = legacy_logprobs(answer.logprobs, len(prefix))
            logprobs = {key: prompt[key] + tail[key] for key in prompt}
        reason = FINISH_REASONS[answer.finish_reason]
        choices.append({"index": i, "text": prefix + answer.text, "logprobs": logprobs, "finish_reason": reason})
    body = {
        "id": completion_id(request_id),
        "object": "text_completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": choices,
        "usage": usage_json(result.usage),
    }
    return {**body, **degraded_json(result.degraded)}


class CompletionChunks(ChoiceStream):
    """Turns one completion request's stream events into SSE lines, in order."""

    def __init__(
        self, request_id: str, model: str, shape: CompletionShape, include_usage: bool, continuous_usage: bool = False
    ):
        super().__init__(completion_id(request_id), "text_completion", model, shape.n, include_usage, continuous_usage)
        self._shape = shape
        self._echo_pending = shape.echo
        self._offsets = [0] * shape.n  # per answer: the next token's text_offset
        self._text: dict[int, str] = {}  # with logprobs: an answer's text, until its tokens' logprobs

    @staticmethod
    def _choice(index: int, text: str, logprobs: Any = None, finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def start(self) -> list[str]:
        # A prompt's log probabilities come in the first event: the echo waits for them.
        if self._shape.echo and self._shape.prompt_text is not None and not self._shape.logprobs:
            return self._echo(())
        return []

    def _echo(self, prompt: Sequence[PositionLogprobs]) -> list[str]:
        self._echo_pending = False
        text = self._shape.echoed(prompt)
        logprobs = legacy_logprobs(prompt, 0) if self._shape.logprobs else None
        self._offsets = [len(text)] * self.n
        return [line for i in range(self.n) for line in self._send([self._choice(i, text, logprobs)], opening=True)]

    def _delta(self, event: StreamEvent) -> list[str]:
        if isinstance(event, PromptLogprobs):
            return self._echo(event.positions) if self._echo_pending else []
        lines = self._echo(()) if self._echo_pending else []  # no prompt log probabilities came
        match event:
            case TextDelta(text, i) if self._shape.logprobs:
                self._text[i] = self._text.get(i, "") + text
            case TextDelta(text, i):
                lines += self._send([self._choice(i, text)])
            case LogprobsDelta(positions, i):
                logprobs = legacy_logprobs(positions, self._offsets[i])
                self._offsets[i] += sum(len(p.chosen.token) for p in positions)
                lines += self._send([self._choice(i, self._text.pop(i, ""), logprobs)])
        return lines  # reasoning, tool calls and agent progress: a completion has none

    def _settle(self) -> list[str]:
        lines = self._echo(()) if self._echo_pending else []
        for i, text in sorted(self._text.items()):
            lines += self._send([self._choice(i, text)])
        self._text.clear()
        return lines

    def _finishing(self, index: int, reason: str) -> dict[str, Any]:
        return self._choice(index, "", finish=reason)
