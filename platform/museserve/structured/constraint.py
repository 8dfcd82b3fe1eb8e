"""The answer's shape as a logits processor: tool calls and JSON, grammar-constrained.

`OutputConstraint` follows one request's tokens through the phases of its answer and masks
the next token's logits to what the phase allows. With the Muse format (calls between
control tokens, `Markers.tool_call_ids`):

    reasoning  -> unconstrained until the reasoning close marker (or no reasoning segment at all)
    start      -> calls only (REQUIRED, NAMED): `<|tool_call|>`
                  JSON answer: the JSON grammar's first tokens, plus `<|tool_call|>` with AUTO tools
                  otherwise: anything but `<|/tool_call|>`
    text       -> anything but `<|/tool_call|>`; `<|tool_call|>` opens a call
    call       -> the call grammar; `<|/tool_call|>` once its JSON is complete
    after call -> the end tokens, or another `<|tool_call|>` (not with NAMED)
    json       -> the JSON grammar; the end tokens once the JSON is complete

With a format whose calls are text (`Markers.tool_call_text`), a required or named call is
one grammar of its own, markers included (`GrammarCache.framed_tool_call`), run as the json
phase; AUTO tools need no constraint there (the engine parses spans the model chooses to
write). So every call that closes parses, and a finished grammar forces the end.

Budget steering (`steering`): in a grammar phase, once the answer's remaining token budget is
down to what the shortest completion of the JSON needs, each next token is forced to that
completion's first token, and a sampled token that would leave too little is replaced by it
(`checked`). The answer then parses and validates; `steered` tells the request state to finish
it with LENGTH. A budget that cannot hold even the shortest answer is refused up front.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from museserve.domain import ToolChoiceKind
from museserve.messages import PreparedRequest
from museserve.preprocess.chat_format import Markers
from museserve.preprocess.tokenizer import Tokenizer
from museserve.structured.steering import Steering

if TYPE_CHECKING:
    import xgrammar as xgr

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    REASONING = "reasoning"
    START = "start"
    TEXT = "text"
    CALL = "call"
    AFTER_CALL = "after_call"
    JSON = "json"
    DONE = "done"  # the grammar ended, or failed: nothing more is constrained


def word_bits(ids: Sequence[int], num_words: int) -> Tensor:
    """An xgrammar-layout bitmask row (int32 words, bit i%32 of word i//32) with `ids` set."""
    words = np.zeros(num_words, dtype=np.uint32)
    for i in ids:
        words[i // 32] |= np.uint32(1 << (i % 32))
    return torch.from_numpy(words.view(np.int32))


class OutputConstraint:
    """A LogitsProcessor holding one request's grammar matchers; fed every accepted token."""

    def __init__(
        self,
        request: PreparedRequest,
        tokenizer: Tokenizer,
        markers: Markers,
        call_grammar: xgr.CompiledGrammar | None,
        json_grammar: xgr.CompiledGrammar | None,
        vocab_size: int,
        steering: Steering | None = None,
    ):
        """`json_grammar`: the answer's grammar (a JSON response format, or a framed call)."""
        import xgrammar as xgr

        self._xgr = xgr
        self._tokenizer = tokenizer
        self._open, self._close = markers.tool_call_ids or (-1, -1)
        self._think_end = markers.think_close_id
        self._end_ids = sorted(markers.stop_ids)
        choice = request.tool_choice.kind
        by_id = markers.tool_call_ids is not None and bool(request.tools)
        self._calls_only = by_id and choice in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED)
        self._single_call = choice is ToolChoiceKind.NAMED
        self._may_call = by_id and choice is not ToolChoiceKind.NONE
        self._call = xgr.GrammarMatcher(call_grammar, override_stop_tokens=[self._close]) if call_grammar else None
        self._json = (
            xgr.GrammarMatcher(json_grammar, override_stop_tokens=self._end_ids)
            if json_grammar and not self._calls_only
            else None
        )
        self.vocab_size = vocab_size
        words = (vocab_size + 31) // 32
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        control = word_bits(sorted(tokenizer.control_ids), words)
        # Bits cleared from a grammar's mask: special tokens other than the matcher's stop tokens.
        self._keep_for_call = ~(control & ~word_bits([self._close] if by_id else [], words))
        self._keep_for_json = ~(control & ~word_bits(self._end_ids, words))
        self._open_bit = word_bits([self._open] if by_id else [], words)
        self.phase = Phase.REASONING if request.thinking_budget > 0 else Phase.START
        self._consumed = 0
        self._steering = steering
        self._answer_tokens = 0  # tokens after the reasoning segment: what max_output_tokens counts
        self._budget = request.max_output_tokens

    @property
    def steered(self) -> bool:
        return self._steering is not None and self._steering.engaged

    def checked(self, token: int) -> int:
        """The sampled token, or the steering's replacement when it would leave the JSON too few
        tokens to close (see `Steering.checked`)."""
        phase = self.phase
        if self._steering is None or phase not in (Phase.START, Phase.JSON, Phase.CALL):
            return token
        if phase is Phase.START and (self._json is None or token == self._open):
            return token
        closing = 1 if phase is Phase.CALL else 0
        return self._steering.checked(token, self._budget - self._answer_tokens - 1 - closing)

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: Tensor) -> Tensor:
        for token in output_ids[self._consumed :]:
            self._accept(token)
        self._consumed = len(output_ids)
        return self._mask(logits)

    def _accept(self, token: int) -> None:
        phase = self.phase
        if phase is Phase.REASONING:
            if token == self._think_end:
                self.phase = Phase.START
            return
        self._answer_tokens += 1
        if token == self._open and phase in (Phase.START, Phase.TEXT, Phase.AFTER_CALL):
            self._call.reset()
            if self._steering is not None:
                self._steering.start_call()
            self.phase = Phase.CALL
        elif phase is Phase.CALL:
            self._feed(self._call, token)
            if token == self._close and self.phase is Phase.CALL:
                self.phase = Phase.AFTER_CALL
        elif phase is Phase.START:
            self.phase = Phase.TEXT if self._json is None else Phase.JSON
            if self._json is not None:
                self._feed(self._json, token)
        elif phase is Phase.JSON:
            self._feed(self._json, token)
        elif phase is Phase.AFTER_CALL:
            self.phase = Phase.DONE

    def _feed(self, matcher: xgr.GrammarMatcher, token: int) -> None:
        if not matcher.accept_token(token):
            logger.warning("grammar refused token %d in phase %s; the rest is unconstrained", token, self.phase.value)
            self.phase = Phase.DONE
        elif self._steering is not None:
            self._steering.accept(token)

    def _mask(self, logits: Tensor) -> Tensor:
        phase = self.phase
        if phase in (Phase.REASONING, Phase.DONE):
            return logits
        if phase is Phase.TEXT or (phase is Phase.START and not self._calls_only and self._json is None):
            logits[self._close] = float("-inf")
            if not self._may_call:
                logits[self._open] = float("-inf")
            return logits
        if phase is Phase.START and self._calls_only:
            return _only(logits, [self._open])
        if phase is Phase.AFTER_CALL:
            if self._single_call or self.steered or not self._room_for_call():
                return _only(logits, self._end_ids)
            return _only(logits, [*self._end_ids, self._open])
        matcher, keep = (self._call, self._keep_for_call) if phase is Phase.CALL else (self._json, self._keep_for_json)
        if matcher.is_terminated():
            return _only(logits, self._end_ids)
        matcher.fill_next_token_bitmask(self._bitmask)
        self._bitmask[0] &= keep
        may_open = phase is Phase.START and self._may_call and self._room_for_call()  # a JSON answer, or a call
        if may_open:
            self._bitmask[0] |= self._open_bit
        if not bool(self._bitmask.any()):  # a dead end: never sample from an empty distribution
            return _only(logits, self._end_ids)
        forced = self._steered_token(phase)
        if forced is None and not may_open:
            forced = self._forced_token(matcher)
        if forced is not None:
            return _only(logits, [forced])
        if logits.shape[-1] > self.vocab_size:  # model vocabulary padded past the tokenizer's
            logits[self.vocab_size :] = float("-inf")
        bitmask = self._bitmask.to(logits.device, non_blocking=True)
        self._xgr.apply_token_bitmask_inplace(logits[None], bitmask, vocab_size=self.vocab_size)
        return logits

    def _room_for_call(self) -> bool:
        remaining = self._budget - self._answer_tokens
        return self._steering is None or self._steering.room_for_call(remaining)

    def _allowed(self, token: int) -> bool:
        return bool((int(self._bitmask[0, token // 32]) >> (token % 32)) & 1)

    def _steered_token(self, phase: Phase) -> int | None:
        """The shortest completion's next token, once the budget calls for it (module docstring)."""
        if self._steering is None:
            return None
        closing = 1 if phase is Phase.CALL else 0  # a Muse call still needs its close token
        token = self._steering.next_token(self._budget - self._answer_tokens - closing)
        return token if token is not None and self._allowed(token) else None

    def _forced_token(self, matcher: xgr.GrammarMatcher) -> int | None:
        """Where the grammar admits one string only (`{"name": "`, a property's key), its first token
        as the tokenizer would write it: the way rendered calls read in the prompt, in fewer steps."""
        jump = matcher.find_jump_forward_string()
        if not jump:
            return None
        token = self._tokenizer.encode_text(jump)[0]
        return token if self._allowed(token) else None


def _only(logits: Tensor, allowed: list[int]) -> Tensor:
    kept = logits[allowed].clone()
    logits.fill_(float("-inf"))
    logits[allowed] = kept
    return logits
