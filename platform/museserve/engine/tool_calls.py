"""Cuts tool-call spans out of an answer and parses them into calls.

A span's JSON is `{"name": ..., "arguments": {...}}`; under a grammar constraint it always
parses. A span that does not (an unconstrained model) comes back as its text, and so does a
span still open when the request ends, so no generated text is lost silently. Two layouts:

- `TokenSpans`: the Muse format's `<|tool_call|> JSON <|/tool_call|>`, control tokens by id;
- `TextSpans`: `<tool_call>\\nJSON\\n</tool_call>` as text (Hermes, Qwen), found in the
  answer's text as it streams. Text that may be the start of the open marker is held back
  until it is known not to be; whitespace between or after calls is dropped.
"""

from __future__ import annotations

import json
import secrets

from museserve.domain import ToolCall
from museserve.preprocess.tokenizer import Tokenizer


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


class TokenSpans:
    def __init__(self, tokenizer: Tokenizer, open_id: int, close_id: int):
        self._tokenizer = tokenizer
        self._open, self._close = open_id, close_id
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


class TextSpans:
    def __init__(self, open_text: str, close_text: str):
        self._open, self._close = open_text, close_text
        self._held = ""  # outside a span: text that may begin the open marker, or whitespace after a call
        self._span: str | None = None  # inside a span: its text so far
        self.ends_in_call = False  # the answer so far ends with a call (and whitespace)

    def push(self, text: str) -> tuple[str, list[ToolCall]]:
        """(text released, calls completed) after this much more of the answer."""
        released: list[str] = []
        calls: list[ToolCall] = []
        pending = self._held + text
        self._held = ""
        while pending:
            if self._span is not None:
                end = (self._span + pending).find(self._close)
                if end < 0:
                    self._span += pending
                    break
                body, pending = (self._span + pending)[:end], (self._span + pending)[end + len(self._close) :]
                self._span = None
                call = parse_call(body.strip())
                if call is None:
                    released.append(self._open + body + self._close)
                    self.ends_in_call = False
                else:
                    calls.append(call)
                    self.ends_in_call = True
                continue
            start = pending.find(self._open)
            if start >= 0:
                if not (self.ends_in_call and not pending[:start].strip()):  # whitespace between calls: dropped
                    self._emit(pending[:start], released)
                self._span, pending = "", pending[start + len(self._open) :]
                continue
            keep = _marker_prefix_len(pending, self._open)
            head, tail = pending[: len(pending) - keep], pending[len(pending) - keep :]
            if self.ends_in_call and not head.strip():
                self._held = head + tail  # whitespace after a call: kept back until text or a call follows
            else:
                self._emit(head, released)
                self._held = tail
            break
        return "".join(released), calls

    def _emit(self, text: str, released: list[str]) -> None:
        if text:
            self.ends_in_call = False
            released.append(text)

    def flush(self) -> str:
        """What is still held at the end: an unclosed span as its text; whitespace after a call dropped."""
        held, span = self._held, self._span
        self._held, self._span = "", None
        if span is not None:
            self.ends_in_call = False
            return held + self._open + span
        return "" if self.ends_in_call and not held.strip() else held


def _marker_prefix_len(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
