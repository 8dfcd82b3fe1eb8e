"""Steering a grammar-constrained answer to its shortest completion before its budget runs out.

A JSON answer or a tool call cut off at `max_output_tokens` does not parse. `Steering` follows
the text of the constrained part of the answer (`json_completion`) and knows, at each step, the
shortest text that completes it and how many tokens that takes (`needed`). Two rules keep
`needed` within the tokens left:

- once the tokens left are down to `needed`, every next token is the completion's first token
  (`next_token`), until the JSON is whole;
- near that point, a sampled token that would open more than the rest of the budget can close
  (a key of an optional object, another array item) is replaced by the completion's first token
  (`checked`): the answer is then steered from this step on.

Required fields still come out, in schema order; the answer parses and validates, and the request
finishes with LENGTH (`engaged`). A budget below the shortest whole answer is refused before the
request starts (`minimum_tokens`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Protocol, Self

from museserve.domain import ResponseFormatKind, ToolChoiceKind, ToolSpec
from museserve.engine.detokenizer import IncrementalDetokenizer
from museserve.messages import PreparedRequest
from museserve.preprocess.chat_format import Markers
from museserve.preprocess.tokenizer import Tokenizer
from museserve.structured.json_completion import JsonCompletion, ToolCallCompletion


class Completion(Protocol):
    def feed(self, text: str) -> None: ...

    def fork(self) -> Self: ...

    def shortest(self) -> str | None: ...

    def max_step_growth(self) -> int: ...


class FramedCompletion:
    """A completion between literal texts: `head` (e.g. `<tool_call>\\n`), the inner JSON, `tail`."""

    def __init__(self, head: str, inner: Completion, tail: str, seen_head: int = 0, seen_tail: int = 0):
        self._head, self._inner, self._tail = head, inner, tail
        self._seen_head, self._seen_tail = seen_head, seen_tail  # characters of each fed so far

    def feed(self, text: str) -> None:
        for char in text:  # a token's few characters; the JSON must not see the tail's
            if self._seen_head < len(self._head):
                self._seen_head += 1
            elif self._inner.shortest() != "":
                self._inner.feed(char)
            else:
                self._seen_tail += 1

    def fork(self) -> FramedCompletion:
        return FramedCompletion(self._head, self._inner.fork(), self._tail, self._seen_head, self._seen_tail)

    def shortest(self) -> str | None:
        inner = self._inner.shortest()
        if inner == "":
            return self._tail[self._seen_tail :]
        return None if inner is None else self._head[self._seen_head :] + inner + self._tail

    def max_step_growth(self) -> int:
        return self._inner.max_step_growth()


class Steering:
    def __init__(self, tokenizer: Tokenizer, answer: Completion | None, call: Callable[[], Completion] | None):
        """`answer`: the completion of the answer's grammar from its start; `call`: a new one per
        call span (the Muse format's calls between control tokens)."""
        self._tokenizer = tokenizer
        self._new_call = call
        self._active = answer
        self._text = IncrementalDetokenizer(tokenizer)
        self._tail: list[int] | None = None  # the completion's ids, kept until the next token is accepted
        self.engaged = False

    def minimum_tokens(self) -> int | None:
        """Tokens of the shortest whole answer (a call: without its control tokens); None: unknown."""
        completion = self._active if self._active is not None else (self._new_call() if self._new_call else None)
        tail = completion.shortest() if completion is not None else None
        return None if tail is None else len(self._tokenizer.encode_text(tail))

    def room_for_call(self, remaining: int) -> bool:
        """Whether another Muse call span (its two control tokens too) fits in `remaining` tokens."""
        if self._new_call is None:
            return True
        tail = self._new_call().shortest()
        return tail is None or remaining >= len(self._tokenizer.encode_text(tail)) + 2

    def start_call(self) -> None:
        if self._new_call is not None:
            self._active = self._new_call()
            self._text = IncrementalDetokenizer(self._tokenizer)
            self._tail = None

    def accept(self, token: int) -> None:
        if self._active is not None:
            self._active.feed(self._text.push([token]))
            self._tail = None

    def next_token(self, remaining: int) -> int | None:
        """The token to force now (`remaining`: tokens left for the JSON, this one included), or
        None to let the grammar's mask alone decide."""
        tail = self._tail_ids()
        if not tail or (not self.engaged and remaining > len(tail)):
            return None
        self.engaged = True
        return tail[0]

    def checked(self, token: int, remaining_after: int) -> int:
        """`token` if the JSON can still close in `remaining_after` tokens once it is accepted; else
        the completion's first token (steering starts)."""
        if self._active is None or self.engaged:
            return token
        tail = self._tail_ids()
        if tail is None or remaining_after + 1 > len(tail) + self._active.max_step_growth():
            return token  # far from the budget's end: no token opens that much
        after = self._active.fork()
        after.feed(self._tokenizer.decode([token]))
        rest = after.shortest()
        if rest is not None and len(self._tokenizer.encode_text(rest)) <= remaining_after:
            return token
        if not tail:
            return token
        self.engaged = True
        return tail[0]

    def _tail_ids(self) -> list[int] | None:
        """The completion's ids; one encoding per step, shared by the mask and the sampled token's check."""
        if self._tail is None and self._active is not None:
            tail = self._active.shortest()
            self._tail = None if tail is None else self._tokenizer.encode_text(tail)
        return self._tail


def steering_for(
    request: PreparedRequest, tools: Sequence[ToolSpec], markers: Markers, tokenizer: Tokenizer
) -> Steering | None:
    """The steering of a constrained request: its JSON answer, its framed call (text markers), or
    each of its Muse call spans."""
    schemas = {t.name: json.loads(t.parameters_json_schema or "{}") for t in tools}
    calls_required = request.tool_choice.kind in (ToolChoiceKind.REQUIRED, ToolChoiceKind.NAMED)
    answer: Completion | None = None
    if tools and markers.tool_call_text is not None and calls_required:
        head, tail = markers.tool_call_text
        answer = FramedCompletion(head + "\n", ToolCallCompletion(schemas), "\n" + tail)
    elif request.response_format.kind is not ResponseFormatKind.TEXT:
        f = request.response_format
        schema = json.loads(f.json_schema) if f.kind is ResponseFormatKind.JSON_SCHEMA else None
        answer = JsonCompletion(schema, f.strict)
    call = (lambda: ToolCallCompletion(schemas)) if tools and markers.tool_call_ids is not None else None
    if answer is None and call is None:
        return None
    return Steering(tokenizer, answer, call)
