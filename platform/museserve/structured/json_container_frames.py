"""Frames of an object and an array being written (see `json_frames` for the protocol).

An object frame's `index` is the first property that may still come (see `json_container_shapes`).
A key's text is kept while it is the start of some property's key; past that it can only be an
additional key, and its text is dropped: what a long key costs stays constant per character.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from museserve.structured.json_container_shapes import Arr, Obj
from museserve.structured.json_frames import (
    BACKSLASH,
    DONE,
    NO_ESCAPE,
    Frame,
    Open,
    Step,
    escape_completion,
    next_escape,
)
from museserve.structured.json_shapes import Shape, join


class At(enum.IntEnum):
    """Where an object frame stands."""

    OPEN = 0  # after `{`
    KEY = 1  # inside a key
    COLON = 2  # after the key's closing quote
    SPACE = 3  # after `:`
    VALUE = 4  # its value is open
    AFTER_VALUE = 5
    COMMA = 6  # after `,`
    NEXT_KEY = 7  # after `, `


@dataclass(frozen=True, slots=True)
class ObjectFrame(Frame):
    shape: Obj
    at: At
    index: int
    key: str | None = ""  # raw key text while it starts some property's key; None past that
    escape: int = NO_ESCAPE
    value_index: int = -1  # after a key: its property, or -1 for an additional key

    def feed(self, c: str) -> Step:
        at, shape, i = self.at, self.shape, self.index
        if at is At.KEY:
            return self._feed_key(c)
        if at in (At.OPEN, At.AFTER_VALUE):
            if c == "}":
                return DONE if shape.next_required[i] == len(shape.properties) else None
            expected = '"' if at is At.OPEN else ","
            if c != expected or not (shape.window(i) or shape.additional_allowed(i)):
                return None
            return ObjectFrame(shape, At.KEY if at is At.OPEN else At.COMMA, i)
        if at is At.COMMA:
            return ObjectFrame(shape, At.NEXT_KEY, i) if c == " " else None
        if at is At.NEXT_KEY:
            return ObjectFrame(shape, At.KEY, i) if c == '"' else None
        if at is At.COLON:
            return ObjectFrame(shape, At.SPACE, i, value_index=self.value_index) if c == ":" else None
        value = self._value_shape()
        if at is At.SPACE and c == " " and value is not None:
            return Open(ObjectFrame(shape, At.VALUE, i), value, False)
        return None

    def _feed_key(self, c: str) -> Step:
        shape, i, key = self.shape, self.index, self.key
        if self.escape == NO_ESCAPE and c == '"':
            return self._close_key()
        if self.escape != NO_ESCAPE:
            escape = next_escape(self.escape, c)
        else:
            escape = None if c < " " else BACKSLASH if c == "\\" else NO_ESCAPE
        if escape is None:
            return None
        typed = None if key is None else key + c
        if typed is not None and not any(k.startswith(typed) for k in shape.keys):
            typed = None
        if shape.additional_allowed(i):
            return ObjectFrame(shape, At.KEY, i, typed, escape)
        if typed is not None and any(shape.properties[j].key.startswith(typed) for j in shape.window(i)):
            return ObjectFrame(shape, At.KEY, i, typed, escape)
        return None

    def _close_key(self) -> Step:
        shape, i, key = self.shape, self.index, self.key
        for j in shape.window(i):
            if shape.properties[j].key == key:
                return ObjectFrame(shape, At.COLON, j + 1, value_index=j)
        if shape.additional_allowed(i) and key not in shape.keys:
            return ObjectFrame(shape, At.COLON, len(shape.properties), value_index=-1)
        return None

    def _value_shape(self) -> Shape | None:
        return self.shape.additional if self.value_index < 0 else self.shape.properties[self.value_index].shape

    def _value_text(self) -> str | None:
        shape = self._value_shape()
        return None if shape is None else shape.min_text

    def closing(self) -> str | None:
        at, shape, i = self.at, self.shape, self.index
        if at is At.OPEN:
            return shape.tail_first[i]
        if at is At.KEY:
            if self.key is None:  # an additional key, none of the properties' keys
                return join(escape_completion(self.escape), '": ', shape.additional_text(), "}")
            closed = self.key + escape_completion(self.escape) if self.escape != NO_ESCAPE else None
            return shape.key_completion(self.key, i, closed)
        if at in (At.COLON, At.SPACE):
            return join(": " if at is At.COLON else " ", self._value_text(), shape.tail_after_entries[i])
        if at is At.AFTER_VALUE:
            return shape.tail_after_entries[i]
        if at is At.COMMA:
            return join(" ", shape.entry_then_tail[i])
        return shape.entry_then_tail[i]  # NEXT_KEY

    def resume(self) -> Frame:
        return ObjectFrame(self.shape, At.AFTER_VALUE, self.index)

    def closing_after_child(self) -> str | None:
        return self.shape.tail_after_entries[self.index]


class ArrayAt(enum.IntEnum):
    OPEN = 0  # after `[`
    ITEM = 1  # an item is open
    AFTER_ITEM = 2
    COMMA = 3  # after `,`; the space opens the next item


@dataclass(frozen=True, slots=True)
class ArrayFrame(Frame):
    shape: Arr
    at: ArrayAt
    count: int  # items complete

    def feed(self, c: str) -> Step:
        shape, at, count = self.shape, self.at, self.count
        if at is ArrayAt.COMMA:
            item = shape.item(count)
            return Open(ArrayFrame(shape, ArrayAt.ITEM, count), item, False) if c == " " and item is not None else None
        if c == "]":
            return DONE if count >= shape.min_items else None
        if at is ArrayAt.AFTER_ITEM:
            return ArrayFrame(shape, ArrayAt.COMMA, count) if c == "," and shape.item(count) is not None else None
        item = shape.item(0)
        return Open(ArrayFrame(shape, ArrayAt.ITEM, 0), item, True) if item is not None else None

    def closing(self) -> str | None:
        shape, count = self.shape, self.count
        if self.at is ArrayAt.COMMA:
            return join(" ", shape.item_text(count), shape.tail(count + 1))
        if self.at is ArrayAt.AFTER_ITEM:
            return shape.tail(count)
        return shape.tail(0)

    def resume(self) -> Frame:
        return ArrayFrame(self.shape, ArrayAt.AFTER_ITEM, self.count + 1)

    def closing_after_child(self) -> str | None:
        return self.shape.tail(self.count + 1)
