"""What one request has generated so far, and whether it is done. Pure: no tensors.

Token handling per step: a sampled (or forced) token goes into the reasoning segment
until `<|/think|>` closes it, then into the answer; `<|eos|>` or `<|end|>` ends the
request, as do a stop string, the output budget, or the context window. When the
reasoning budget is spent, the next token is forced to `<|/think|>`. When the request offers
tools, `<|tool_call|>...<|/tool_call|>` spans of the answer become ToolCall values, not text;
an answer that ends right after a call finishes with TOOL_CALLS.
"""

from __future__ import annotations

from museserve.domain import FinishReason, PositionLogprobs, ToolCall, Usage
from museserve.engine.detokenizer import IncrementalDetokenizer
from museserve.engine.tool_calls import ToolCallSpans
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.preprocess.tokenizer import MuseTokenizer


class RequestState:
    def __init__(self, request: PreparedRequest, tokenizer: MuseTokenizer):
        self.request = request
        self._think_end_id = tokenizer.think_end_id
        self._end_ids = frozenset((tokenizer.eos_id, tokenizer.end_id, *request.stop_token_ids))
        self.in_reasoning = request.thinking_budget > 0  # the template opened the segment
        self.reasoning_tokens = 0
        self.output_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.finish: FinishReason | None = None
        self._reasoning = IncrementalDetokenizer(tokenizer)
        self._answer = IncrementalDetokenizer(tokenizer, stop=request.stop)
        self._pending_reasoning: list[str] = []
        self._pending_text: list[str] = []
        self._pending_logprobs: list[PositionLogprobs] = []
        self._pending_tokens = 0
        self._calls = ToolCallSpans(tokenizer) if request.tools else None
        self._pending_calls: list[ToolCall] = []
        self._ends_in_call = False  # the last answer token closed a call

    @property
    def num_generated_tokens(self) -> int:
        return self.reasoning_tokens + self.output_tokens

    @property
    def num_tokens(self) -> int:
        return self.request.num_prompt_tokens + self.num_generated_tokens

    def forced_token(self) -> int | None:
        if self.in_reasoning and self.reasoning_tokens >= self.request.thinking_budget:
            return self._think_end_id
        return None

    def append(self, token_id: int, logprobs: PositionLogprobs | None = None) -> None:
        """`logprobs` of the token, when the request asked for them; kept for answer tokens."""
        assert self.finish is None, "no token may follow the end of a request"
        self._pending_tokens += 1
        if self.in_reasoning:
            self.reasoning_tokens += 1
            if token_id == self._think_end_id:
                self.in_reasoning = False
                self._pending_reasoning.append(self._reasoning.flush())
            elif token_id in self._end_ids:
                self._pending_reasoning.append(self._reasoning.flush())
                self.finish = FinishReason.STOP
            else:
                self._pending_reasoning.append(self._reasoning.push([token_id]))
            return
        self.output_tokens += 1
        if token_id in self._end_ids:
            self._end(FinishReason.TOOL_CALLS if self._ends_in_call else FinishReason.STOP)
            return
        if self._calls is not None and self._calls.consumes(token_id):
            done = self._calls.push(token_id)
            self._ends_in_call = isinstance(done, ToolCall)
            if isinstance(done, ToolCall):
                self._pending_calls.append(done)
            elif done:
                self._pending_text.append(done)
        else:
            self._ends_in_call = False
            self._pending_text.append(self._answer.push([token_id]))
            if logprobs is not None:
                self._pending_logprobs.append(logprobs)
        if self._answer.stopped:
            self.finish = FinishReason.STOP
        elif self.output_tokens >= self.request.max_output_tokens:
            self._end(FinishReason.TOOL_CALLS if self._ends_in_call else FinishReason.LENGTH)

    def end_for_length(self) -> None:
        """The context window is full."""
        self._pending_reasoning.append(self._reasoning.flush())
        self._end(FinishReason.LENGTH)

    def _end(self, reason: FinishReason) -> None:
        self._pending_text.append(self._answer.flush())
        if self._calls is not None:
            self._pending_text.append(self._calls.flush())
        self.finish = reason

    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=self.request.num_prompt_tokens,
            cached_tokens=self.num_cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
            output_tokens=self.output_tokens,
        )

    def take_chunk(self) -> GenerationChunk:
        """Everything produced since the last call; the final chunk carries finish and usage."""
        chunk = GenerationChunk(
            text="".join(self._pending_text),
            reasoning="".join(self._pending_reasoning),
            logprobs=tuple(self._pending_logprobs),
            tool_calls=tuple(self._pending_calls),
            num_new_tokens=self._pending_tokens,
            finish=self.finish,
            usage=self.usage() if self.finish is not None else None,
        )
        self._pending_text.clear()
        self._pending_reasoning.clear()
        self._pending_logprobs.clear()
        self._pending_calls.clear()
        self._pending_tokens = 0
        return chunk
