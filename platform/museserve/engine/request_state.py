"""What one request has generated so far, and whether it is done. Pure: no tensors.

Token handling per step: a sampled (or forced) token goes into the reasoning segment
until the format's close marker (`<|/think|>`, `</think>`) ends it, then into the answer;
one of the format's stop ids (end of sequence, end of turn) ends the request, as do a stop
string, the output budget, or the context window. When the reasoning budget is spent, the
next token is forced to the close marker. When the request offers tools, the format's call
spans in the answer become ToolCall values, not text (`tool_calls`); an answer that ends
right after a call finishes with TOOL_CALLS. An answer a grammar steered to its shortest
completion at the budget (a token that comes `steered`) finishes with LENGTH, whatever ended it.
"""

from __future__ import annotations

import math

from museserve.domain import FinishReason, PositionLogprobs, TokenLogprob, ToolCall, Usage
from museserve.engine.detokenizer import IncrementalDetokenizer
from museserve.engine.tool_calls import TextSpans, TokenSpans
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.preprocess.chat_format import Markers
from museserve.preprocess.tokenizer import Tokenizer


class RequestState:
    def __init__(self, request: PreparedRequest, tokenizer: Tokenizer, markers: Markers):
        self.request = request
        self._think_end_id = markers.think_close_id
        stops = () if request.sampling.ignore_eos else markers.stop_ids
        self._end_ids = frozenset((*stops, *request.sampling.stop_token_ids))
        self._steered = False  # a grammar cut the answer short to close it within its budget
        self.in_reasoning = request.thinking_budget > 0  # the template opened the segment
        self.reasoning_tokens = 0
        self.output_tokens = 0
        self.finish: FinishReason | None = None
        self._reasoning = IncrementalDetokenizer(tokenizer)
        self._answer = IncrementalDetokenizer(
            tokenizer, stop=request.sampling.stop, skip_special_tokens=request.sampling.skip_special_tokens
        )
        self._pending_reasoning: list[str] = []
        self._pending_text: list[str] = []
        self._pending_logprobs: list[PositionLogprobs] = []
        self._pending_tokens = 0
        self._calls = TokenSpans(tokenizer, *markers.tool_call_ids) if request.tools and markers.tool_call_ids else None
        self._text_calls = TextSpans(*markers.tool_call_text) if request.tools and markers.tool_call_text else None
        self._pending_calls: list[ToolCall] = []
        self._ends_in_call = False  # the last answer token closed a call
        # With sampling.prompt_logprobs: every prompt token's, the first one's NaN; sent once, when whole.
        self._prompt_logprobs: list[PositionLogprobs] | None = None
        if request.sampling.prompt_logprobs is not None:
            first = request.prompt_token_ids[0]
            token = TokenLogprob(tokenizer.decode([first], skip_special_tokens=False), first, math.nan)
            self._prompt_logprobs = [PositionLogprobs(token)]

    @property
    def num_generated_tokens(self) -> int:
        return self.reasoning_tokens + self.output_tokens

    @property
    def num_tokens(self) -> int:
        return self.request.num_prompt_tokens + self.num_generated_tokens

    def add_prompt_logprobs(self, positions: list[PositionLogprobs]) -> None:
        """The next prompt positions' (in order): the logprob of each prompt token after the first."""
        assert self._prompt_logprobs is not None, "the request did not ask for prompt logprobs"
        self._prompt_logprobs.extend(positions)

    def _take_prompt_logprobs(self) -> tuple[PositionLogprobs, ...]:
        scores = self._prompt_logprobs
        if scores is None or len(scores) < self.request.num_prompt_tokens:
            return ()
        self._prompt_logprobs = None
        return tuple(scores)

    def tokens_before_forced(self) -> int | None:
        """Tokens that may be sampled before the next forced one (the reasoning close marker at
        the budget), less the one sampled anyway: how many a step may propose. None: none is ahead."""
        if not self.in_reasoning:
            return None
        return max(0, self.request.thinking_budget - self.reasoning_tokens - 1)

    def forced_token(self, num_pending: int = 0) -> int | None:
        """The token the next sample must be: the reasoning close marker once the budget is spent.
        `num_pending`: tokens sampled before it that this state has not seen yet (0 or 1); if one
        is, it counts as reasoning, and the runner forces nothing when it was the marker itself."""
        if self.in_reasoning and self.reasoning_tokens + num_pending >= self.request.thinking_budget:
            return self._think_end_id
        return None

    def append(self, token_id: int, logprobs: PositionLogprobs | None = None, steered: bool = False) -> None:
        """`logprobs` of the token, when the request asked for them; kept for answer tokens.
        `steered`: the grammar is steering the answer to its shortest close (finish: LENGTH)."""
        assert self.finish is None, "no token may follow the end of a request"
        self._steered = self._steered or steered
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
            self._pending_text.append(self._text(self._answer.push([token_id])))
            if logprobs is not None:
                self._pending_logprobs.append(logprobs)
        if self._answer.stopped:
            self._end(FinishReason.STOP)
        elif self.output_tokens >= self.request.max_output_tokens:
            self._end(FinishReason.TOOL_CALLS if self._ends_in_call else FinishReason.LENGTH)

    def end_for_length(self) -> None:
        """The context window is full."""
        self._pending_reasoning.append(self._reasoning.flush())
        self._end(FinishReason.LENGTH)

    def _text(self, text: str) -> str:
        """Answer text with the text-marked call spans cut out (into `_pending_calls`)."""
        if self._text_calls is None:
            return text
        released, calls = self._text_calls.push(text) if text else ("", [])
        self._pending_calls.extend(calls)
        self._ends_in_call = self._text_calls.ends_in_call
        return released

    def _end(self, reason: FinishReason) -> None:
        self._pending_text.append(self._text(self._answer.flush()))
        if self._calls is not None:
            self._pending_text.append(self._calls.flush())
        if self._text_calls is not None:
            self._pending_text.append(self._text_calls.flush())
            if reason is FinishReason.STOP and self._text_calls.ends_in_call:
                reason = FinishReason.TOOL_CALLS
        if self._steered:
            reason = FinishReason.LENGTH
        self.finish = reason

    def usage(self, num_cached_tokens: int = 0) -> Usage:
        """`num_cached_tokens`: prompt tokens the prefix cache served (the sequence's count)."""
        return Usage(
            prompt_tokens=self.request.num_prompt_tokens,
            cached_tokens=num_cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
            output_tokens=self.output_tokens,
        )

    def take_chunk(self, num_cached_tokens: int = 0) -> GenerationChunk:
        """Everything produced since the last call; the final chunk carries finish and usage."""
        chunk = GenerationChunk(
            text="".join(self._pending_text),
            reasoning="".join(self._pending_reasoning),
            logprobs=tuple(self._pending_logprobs),
            tool_calls=tuple(self._pending_calls),
            num_new_tokens=self._pending_tokens,
            finish=self.finish,
            usage=self.usage(num_cached_tokens) if self.finish is not None else None,
            prompt_logprobs=self._take_prompt_logprobs(),
        )
        self._pending_text.clear()
        self._pending_reasoning.clear()
        self._pending_logprobs.clear()
        self._pending_calls.clear()
        self._pending_tokens = 0
        return chunk
