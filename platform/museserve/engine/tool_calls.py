"""Cuts `<|tool_call|> JSON <|/tool_call|>` spans out of an answer and parses them into calls.

A span's JSON is `{"name": ..., "arguments": {...}}`; under a grammar constraint it always
parses. A span that does not (an unconstrained model) comes back as its text, and so does a
span still open when the request ends, so no generated text is lost silently.
"""

from __future__ import annotations

import json
import secrets

from museserve.domain import ToolCall
from museserve.preprocess.tokenizer import MuseTokenizer


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_call(text: str) -> ToolCall | None:
    """The call in a span's JSON, or None if it is not `{"name": str, "arguments": object}`."""
    try:
        value = json.loads(text, strict=False)  # raw control characters in strings are tolerated
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", {})
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), value["name"], json.dumps(arguments, ensure_ascii=False))


class ToolCallSpans:
    def __init__(self, tokenizer: MuseTokenizer):
        self._tokenizer = tokenizer
        self._open, self._close = tokenizer.tool_call_id, tokenizer.tool_call_end_id
        self._span: list[int] | None = None  # ids inside the open span; None outside one

    @property
    def in_call(self) -> bool:
        return self._span is not None

    def consumes(self, token_id: int) -> bool:
        """Whether the token belongs to a span: it opens one, or one is open."""
        return self._span is not None or token_id == self._open

    def push(self, token_id: int) -> ToolCall | str | None:
        """For a token that `consumes`: the call its span made once closed (or the span's text when
        it does not parse); None while the span is open."""
        if self._span is None:
            self._span = []
            return None
        if token_id != self._close:
            self._span.append(token_id)
            return None
        text = self._tokenizer.decode(self._span)
        self._span = None
        call = parse_call(text)
        return call if call is not None else text

    def flush(self) -> str:
        """The text of a span still open at the end of the request."""
        if self._span is None:
            return ""
        text = self._tokenizer.decode(self._span)
        self._span = None
        return text
