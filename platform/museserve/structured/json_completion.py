"""The shortest text that completes a partial JSON answer or tool call into a valid instance.

A constrained answer cut off at `max_tokens` does not parse; the engine steers it, near the end of
its budget, to the shortest completion its grammar accepts. This module answers "what is that
completion" in pure Python, for the grammars `structured/grammar.py` compiles: xgrammar's JSON Schema
grammar with compact separators (`{"a": 1, "b": [true, false]}`), properties in schema order.

The shortest instance of each shape (a schema node as xgrammar reads it): a string `""` (or
`minLength` times "a"), a number `0` or the smallest magnitude its bounds allow, `false` (preferred
to the one character shorter `true`), `null`, an array of `minItems` shortest items, an object of its
required properties in schema order with shortest values, the shortest member of an enum/const as
xgrammar writes it (compact, %.17g doubles), the shortest alternative of anyOf/oneOf/type lists, `0`
for an empty schema. Partial text closes the same way: an open string (a pending `\\` or `\\u12`
finished first), a number (`-`, `1.`, `1e+`), a literal (`tru`), a key (to the shortest property that
may come next, or an additional key where allowed), an enum string (its shortest member with that
prefix). The keywords written, and those followed but not written (`pattern`, `format`, ...), are
listed in `json_schema_shapes`.

How it works: the text fed is read by a stack of immutable frames (`json_frames`,
`json_container_frames`), one per open value. Where anyOf alternatives start alike, several stacks
(threads) read on together, sharing the frames below the fork; a thread dies at the first character
its alternative does not admit. The completion of a thread is its top frame's `closing()` plus each
frame's `closing_after_child()` below, all table lookups; `shortest()` takes the shortest thread's.

Cost (measured in tests/unit/test_json_completion.py, printed there): `feed` does constant work per
character and thread, a few allocations at most (none inside an unbounded string), plus a check of
the object's keys while a key being typed is still the start of one; `shortest()` walks the stack,
O(nesting depth + the completion's length), plus a scan of the properties that may come next while
a key is typed and a few intervals for a bounded number. The shapes, their shortest texts and tables
are built once per schema (an LRU keyed by the schema's text) and shared, read-only, by every
completion of that schema.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from museserve.structured.json_container_frames import ArrayAt, ArrayFrame, At, ObjectFrame
from museserve.structured.json_container_shapes import Arr, Obj
from museserve.structured.json_frames import FINISHED, OPAQUE_MARK, Done, Frame, Open, PendingValue, begin_scalar
from museserve.structured.json_schema_shapes import SchemaReader, tool_calls_shape
from museserve.structured.json_shapes import Opaque, Shape, Union, finish, join, shorter


class _Node:
    """One frame of a thread's stack; the frames below are shared between threads."""

    __slots__ = ("frame", "below")

    def __init__(self, frame: Frame, below: _Node | None):
        self.frame = frame
        self.below = below


def _begin(shape: Shape, c: str, below: _Node | None) -> list[_Node]:
    """The threads a value of `shape` starts at its first character `c`."""
    if isinstance(shape, Union):
        return [node for alternative in shape.alternatives for node in _begin(alternative, c, below)]
    if isinstance(shape, Opaque):
        return [] if shape.inner is None else _begin(shape.inner, c, _Node(OPAQUE_MARK, below))
    if isinstance(shape, Obj):
        return [_Node(ObjectFrame(shape, At.OPEN, 0), below)] if c == "{" else []
    if isinstance(shape, Arr):
        return [_Node(ArrayFrame(shape, ArrayAt.OPEN, 0), below)] if c == "[" else []
    frame = begin_scalar(shape, c)
    return [] if frame is None else [_Node(frame, below)]


def _advance(node: _Node, c: str) -> list[_Node]:
    frame = node.frame
    if type(frame) is PendingValue:
        return _begin(frame.shape, c, node.below)
    step = frame.feed(c)
    if step is frame:
        return [node]
    if step is None:
        return []
    if isinstance(step, Open):
        parent = _Node(step.parent, node.below)
        return _begin(step.shape, c, parent) if step.refeed else [_Node(PendingValue(step.shape), parent)]
    if isinstance(step, Done):
        below = node.below
        resumed = _Node(FINISHED, None) if below is None else _Node(below.frame.resume(), below.below)
        return _advance(resumed, c) if step.refeed else [resumed]
    return [_Node(step, node.below)]


def _completion(node: _Node) -> str | None:
    parts = [node.frame.closing()]
    below = node.below
    while below is not None:
        parts.append(below.frame.closing_after_child())
        below = below.below
    return join(*parts)


@functools.lru_cache(maxsize=256)
def _schema_shapes(schema_text: str, strict: bool) -> tuple[Shape, int]:
    """A schema's shapes, finished; shapes never change after, so completions share them."""
    root = SchemaReader(json.loads(schema_text), strict).root
    return root, finish(root)


@functools.lru_cache(maxsize=256)
def _tool_call_shapes(tools_text: str, strict: bool) -> tuple[Shape, int]:
    root = tool_calls_shape(json.loads(tools_text), strict)
    return root, finish(root)


class _Completion:
    def __init__(self, shapes: tuple[Shape, int]):
        root, self._growth = shapes
        self._minimal = root.min_text
        self._threads = [_Node(PendingValue(root), None)]

    def fork(self) -> _Completion:
        """A copy that reads on independently (frames are immutable: only the thread list is copied)."""
        copy = object.__new__(type(self))
        copy._growth, copy._minimal, copy._threads = self._growth, self._minimal, list(self._threads)
        return copy

    def feed(self, text: str) -> None:
        """The next characters generated, split anywhere (mid-string, mid-escape, mid-number, mid-key)."""
        threads = self._threads
        for c in text:
            if len(threads) == 1:
                threads = _advance(threads[0], c)
                continue
            unique: dict[tuple[Frame, int], _Node] = {}
            for node in threads:
                for after in _advance(node, c):  # threads that met again after a fork are one
                    unique.setdefault((after.frame, id(after.below)), after)
            threads = list(unique.values())
        self._threads = threads

    def shortest(self) -> str | None:
        """The shortest text that, appended to everything fed, makes a complete instance the grammar
        accepts and the schema validates; "" when complete. None when it cannot tell: inside a value
        it does not synthesise (see `json_schema_shapes`: `pattern`, `format`, ...) or whose required
        parts include one, or once the text fed left the grammar."""
        best = None
        for node in self._threads:
            best = shorter(best, _completion(node))
        return best

    @property
    def complete(self) -> bool:
        return self.shortest() == ""

    def minimal_length(self) -> int:
        """len(shortest()) before anything is fed; 0 where no instance can be written (shortest() is
        then None until the text passes what cannot be written). Not a bound on what one character
        may add: opening an optional property or another item adds that member's shortest value."""
        return 0 if self._minimal is None else len(self._minimal)

    def max_step_growth(self) -> int:
        """The most one character can lengthen shortest(): the longest shortest-entry (`, "key": value`,
        `, item`), enum member, number bound or alternative in the schema, plus separators. Holds
        while the text follows one alternative of each anyOf/oneOf/type list from its first
        character; where alternatives start alike and the one with the shortest completion is
        ruled out later, the completion jumps to the next one's. A token adds at most this times
        its characters."""
        return self._growth


class JsonCompletion(_Completion):
    """Follows one JSON value being generated under a schema, character by character."""

    def __init__(self, schema: Mapping[str, Any] | None, strict: bool = True):
        """`schema`: None for any JSON object (the json_object response format)."""
        super().__init__(_schema_shapes(json.dumps({"type": "object"} if schema is None else schema), strict))


class ToolCallCompletion(_Completion):
    """The same for `{"name": "<tool>", "arguments": <object>}`, one schema per tool name; each
    arguments schema is read as `{"type": "object", **schema}`, as GrammarCache compiles it."""

    def __init__(self, tools: Mapping[str, Mapping[str, Any] | None], strict: bool = True):
        super().__init__(_tool_call_shapes(json.dumps(tools), strict))
