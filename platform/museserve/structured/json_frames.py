"""One open JSON value's progress, as an immutable frame; a stack of them is one reading of the text.

`feed(c)` answers with what follows the character: the next frame, the frame itself (nothing that
matters changed), `Open` (the value opens a member, which is pushed), `DONE` (`c` ended the value,
which is popped), `DONE_REFEED` (the value ended before `c`, which goes to the frame below: how a
number or a literal ends) or None (`c` is not admitted here). `closing()` is the shortest text that
ends the value from here; `closing_after_child()` the same for a frame whose member is still open,
once that member is done. Both are lookups in the shape's tables, but for a key being typed (a
scan of the properties that may come next) and a bounded number (a few intervals).
"""

from __future__ import annotations

from dataclasses import dataclass

from museserve.structured import json_numbers as num
from museserve.structured.json_shapes import FILLER, Framed, Literals, Number, Shape, Text, join

_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('"\\/bfnrt')
# Escape states inside a string: 0 none, 1 after a backslash, 2-5 after `\u` and 0-3 hex digits.
NO_ESCAPE, BACKSLASH = 0, 1


def next_escape(state: int, c: str) -> int | None:
    if state == BACKSLASH:
        return 2 if c == "u" else NO_ESCAPE if c in _SIMPLE_ESCAPES else None
    if c not in _HEX:
        return None
    return NO_ESCAPE if state == 5 else state + 1


def escape_completion(state: int) -> str:
    """Ends a pending escape: a backslash becomes an escaped backslash, `\\u12` becomes `\\u1200`."""
    return "" if state == NO_ESCAPE else "\\" if state == BACKSLASH else "0" * (6 - state)


class Frame:
    __slots__ = ()

    def feed(self, c: str) -> Step:
        raise NotImplementedError

    def closing(self) -> str | None:
        raise NotImplementedError

    def resume(self) -> Frame:
        raise TypeError(f"{type(self).__name__} opens no member")

    def closing_after_child(self) -> str | None:
        raise TypeError(f"{type(self).__name__} opens no member")


@dataclass(frozen=True, slots=True)
class Open:
    parent: Frame  # the frame below the member, waiting for it
    shape: Shape  # what the member may be
    refeed: bool  # the character that opened it is the member's first


class Done:
    __slots__ = ("refeed",)

    def __init__(self, refeed: bool):
        self.refeed = refeed  # the value ended before the character, which goes to the frame below


DONE, DONE_REFEED = Done(False), Done(True)
Step = Frame | Open | Done | None


@dataclass(frozen=True, slots=True)
class PendingValue(Frame):
    """A value not begun; the tracker expands its shape's alternatives at its first character."""

    shape: Shape

    def closing(self) -> str | None:
        return self.shape.min_text


@dataclass(frozen=True, slots=True)
class Ended(Frame):
    """A value already complete (after an opaque one): every character belongs to the frame below."""

    def feed(self, c: str) -> Step:
        return DONE_REFEED

    def closing(self) -> str | None:
        return ""


@dataclass(frozen=True, slots=True)
class Finished(Frame):
    """The whole instance is complete; nothing may follow."""

    def feed(self, c: str) -> Step:
        return None

    def closing(self) -> str | None:
        return ""


@dataclass(frozen=True, slots=True)
class OpaqueMark(Frame):
    """Sits below a value that is followed but cannot be written: no completion while it is open."""

    def resume(self) -> Frame:
        return ENDED

    def closing_after_child(self) -> str | None:
        return None


ENDED, FINISHED, OPAQUE_MARK = Ended(), Finished(), OpaqueMark()


@dataclass(frozen=True, slots=True)
class LiteralFrame(Frame):
    shape: Literals
    typed: int
    candidates: tuple[str, ...]  # the texts starting with what was typed, in order of preference

    def feed(self, c: str) -> Step:
        i = self.typed
        matching = tuple(t for t in self.candidates if len(t) > i and t[i] == c)
        if matching:
            return LiteralFrame(self.shape, i + 1, matching)
        return DONE_REFEED if any(len(t) == i for t in self.candidates) else None

    def closing(self) -> str | None:
        return min(self.candidates, key=len)[self.typed :]


@dataclass(frozen=True, slots=True)
class StringFrame(Frame):
    shape: Text
    length: int  # characters so far; counted only where a length is bounded (no escapes then)
    escape: int = NO_ESCAPE

    def feed(self, c: str) -> Step:
        if self.escape != NO_ESCAPE:
            state = next_escape(self.escape, c)
            return None if state is None else StringFrame(self.shape, self.length, state)
        if c == '"':
            return DONE if self.length >= self.shape.min_length else None
        if c < " " or (c == "\\" and self.shape.counted):
            return None
        if c == "\\":
            return StringFrame(self.shape, self.length, BACKSLASH)
        if not self.shape.counted:
            return self
        limit = self.shape.max_length
        return None if limit is not None and self.length >= limit else StringFrame(self.shape, self.length + 1)

    def closing(self) -> str | None:
        return escape_completion(self.escape) + FILLER * max(0, self.shape.min_length - self.length) + '"'


@dataclass(frozen=True, slots=True)
class NumberFrame(Frame):
    shape: Number
    text: str
    state: num.NumberState

    def feed(self, c: str) -> Step:
        state = num.next_state(self.state, c, self.shape.integer, self.shape.bounds is not None)
        if state is not None:
            return NumberFrame(self.shape, self.text + c, state)
        return DONE_REFEED if self.closing() == "" else None

    def closing(self) -> str | None:
        if self.shape.bounds is None:
            return num.unbounded_completion(self.state, self.shape.integer)
        return num.bounded_completion(self.text, self.shape.integer, self.shape.bounds)


@dataclass(frozen=True, slots=True)
class FramedFrame(Frame):
    shape: Framed
    in_tail: bool
    typed: int  # characters of the head (or of the tail) written

    def feed(self, c: str) -> Step:
        text = self.shape.tail if self.in_tail else self.shape.head
        if c != text[self.typed]:
            return None
        if self.typed + 1 < len(text):
            return FramedFrame(self.shape, self.in_tail, self.typed + 1)
        return DONE if self.in_tail else Open(FramedFrame(self.shape, False, self.typed), self.shape.inner, False)

    def closing(self) -> str | None:
        if self.in_tail:
            return self.shape.tail[self.typed :]
        return join(self.shape.head[self.typed :], self.shape.inner.min_text, self.shape.tail)

    def resume(self) -> Frame:
        return FramedFrame(self.shape, True, 0)

    def closing_after_child(self) -> str | None:
        return self.shape.tail


def begin_scalar(shape: Shape, c: str) -> Frame | None:
    """The frame of a value of `shape` (not an object, array or union) after its first character."""
    if isinstance(shape, Text):
        return StringFrame(shape, 0) if c == '"' else None
    if isinstance(shape, Number):
        state = num.next_state(num.NumberState.START, c, shape.integer, shape.bounds is not None)
        return None if state is None else NumberFrame(shape, c, state)
    if isinstance(shape, Literals):
        step = LiteralFrame(shape, 0, shape.texts).feed(c)
        return step if isinstance(step, LiteralFrame) else None
    if isinstance(shape, Framed):
        return FramedFrame(shape, False, 1) if c == shape.head[0] else None
    raise TypeError(f"not a scalar shape: {type(shape).__name__}")
