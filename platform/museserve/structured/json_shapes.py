"""What a JSON value may look like under a schema, as xgrammar writes it, and its shortest text.

`json_schema_shapes` reads a schema once into a graph of shapes (cyclic where `$ref` recurses);
objects and arrays are in `json_container_shapes`.
`finish` then gives every shape `min_text`, the shortest text xgrammar accepts for it (separators
", " and ": ", properties in schema order, optional ones left out), and the tables that make each
completion a lookup. `min_text` is None where no text can be written: an `Opaque` value (a feature
this package follows but does not synthesise, e.g. `pattern`) or a recursion with no finite instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from museserve.structured.json_numbers import NumberBounds, bounded_completion

FILLER = "a"  # the character a `minLength` string is padded with
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_INT64 = 2**63


def shorter(a: str | None, b: str | None) -> str | None:
    """The shorter text, `a` on a tie; None counts as endless."""
    return b if a is None or (b is not None and len(b) < len(a)) else a


def join(*parts: str | None) -> str | None:
    """The parts end to end; None if any is None (a part that cannot be written)."""
    texts = [p for p in parts if p is not None]
    return "".join(texts) if len(texts) == len(parts) else None


def quote(text: str) -> str:
    """A JSON string as xgrammar writes a schema's keys and constants."""
    return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in text) + '"'


def serialize(value: Any) -> str:
    """A constant as xgrammar writes it: compact, keys in the schema's order, doubles as %.17g."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return str(value)
    if isinstance(value, int | float):
        return f"{float(value):.17g}"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "[" + ",".join(map(serialize, value)) + "]"
    return "{" + ",".join(quote(k) + ":" + serialize(v) for k, v in value.items()) + "}"


@dataclass(eq=False)
class Shape:
    min_text: str | None = field(default=None, init=False)

    def children(self) -> Iterable[Shape]:
        return ()

    def compute_min(self) -> str | None:
        raise NotImplementedError

    def build_tables(self) -> None:
        """Called once every `min_text` is final."""

    def step_growth(self) -> int:
        """How much one character inside a value of this shape can lengthen the completion."""
        return 0


@dataclass(eq=False)
class Literals(Shape):
    """One of a few exact texts (enum, const, true/false, null), in order of preference."""

    texts: tuple[str, ...] = ()

    def compute_min(self) -> str | None:
        return self.texts[0] if self.texts else None

    def step_growth(self) -> int:
        return max(map(len, self.texts), default=0)


@dataclass(eq=False)
class Text(Shape):
    """A string. xgrammar admits escapes only when neither length is bounded."""

    min_length: int = 0
    max_length: int | None = None

    @property
    def counted(self) -> bool:
        return self.min_length > 0 or self.max_length is not None

    def compute_min(self) -> str | None:
        return '"' + FILLER * self.min_length + '"'

    def step_growth(self) -> int:
        return 3  # `\u` opens four hex digits where a closing quote was one character


@dataclass(eq=False)
class Number(Shape):
    integer: bool = False
    bounds: NumberBounds | None = None

    def compute_min(self) -> str | None:
        return "0" if self.bounds is None else bounded_completion("", self.integer, self.bounds)

    def step_growth(self) -> int:
        if self.bounds is None:
            return 1
        ends = [abs(b) for b in (self.bounds.low, self.bounds.high) if b is not None]
        return 10 + len(str(int(max(ends, default=0))))


@dataclass(eq=False)
class Opaque(Shape):
    """Any value, followed but never written: its schema constrains it in ways not synthesised."""

    inner: Shape | None = None  # any JSON value, to follow its syntax (None: nothing to follow)

    def children(self) -> Iterable[Shape]:
        return () if self.inner is None else (self.inner,)

    def compute_min(self) -> str | None:
        return None


@dataclass(eq=False)
class Union(Shape):
    """anyOf, oneOf (xgrammar treats it as anyOf) and type lists; flattened, so never nested.
    Empty for the `false` schema."""

    alternatives: tuple[Shape, ...] = ()

    def children(self) -> Iterable[Shape]:
        return self.alternatives

    def compute_min(self) -> str | None:
        best = None
        for alternative in self.alternatives:
            best = shorter(best, alternative.min_text)
        return best

    def step_growth(self) -> int:
        return max((len(a.min_text) for a in self.alternatives if a.min_text is not None), default=0)


@dataclass(eq=False)
class Framed(Shape):
    """Literal text, a value, literal text: a tool call's `{"name": "f", "arguments": ` ... `}`."""

    head: str = ""
    inner: Shape = field(default_factory=Opaque)
    tail: str = ""

    def children(self) -> Iterable[Shape]:
        return (self.inner,)

    def compute_min(self) -> str | None:
        return join(self.head, self.inner.min_text, self.tail)

    def step_growth(self) -> int:
        return len(self.min_text or "")


def reachable(root: Shape) -> Iterator[Shape]:
    seen: set[int] = set()
    stack = [root]
    while stack:
        shape = stack.pop()
        if id(shape) not in seen:
            seen.add(id(shape))
            yield shape
            stack.extend(shape.children())


def finish(root: Shape) -> int:
    """Computes every shape's `min_text` (shortest texts only ever get shorter, so this settles)
    and tables; returns the most one character can lengthen a completion (see JsonCompletion)."""
    shapes = list(reachable(root))[::-1]  # members before their containers, mostly: fewer rounds
    changed = True
    while changed:
        changed = False
        for shape in shapes:
            text = shorter(shape.min_text, shape.compute_min())
            if text is not shape.min_text:
                shape.min_text, changed = text, True
    for shape in shapes:
        shape.build_tables()
    return max(shape.step_growth() for shape in shapes)
