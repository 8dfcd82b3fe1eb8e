"""Object and array shapes (see `json_shapes`), with the tables that make their completions lookups.

An object's index i is the first property that may still come: properties go in schema order, so
the next key is one in `window(i)` (optional ones, up to and with the first required one), or, once
no required property is left, an additional key where the shape allows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from museserve.structured.json_shapes import Shape, join, shorter

_FRESH_KEY_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def fresh_key(prefix: str, taken: frozenset[str]) -> str:
    """The shortest key text starting with `prefix` that is none of `taken`."""
    if prefix not in taken:
        return prefix
    for c in _FRESH_KEY_CHARS:
        if prefix + c not in taken:
            return prefix + c
    return fresh_key(prefix + _FRESH_KEY_CHARS[0], taken)


@dataclass(eq=False)
class Property:
    key: str  # as xgrammar writes it between the quotes
    shape: Shape
    required: bool

    def entry(self) -> str | None:
        return join('"', self.key, '": ', self.shape.min_text)


@dataclass(eq=False)
class Obj(Shape):
    """Properties in schema order, optional ones skippable; then, where `additional` is set,
    further keys that are none of the properties' (never before a required property)."""

    properties: tuple[Property, ...] = ()
    additional: Shape | None = None
    keys: frozenset[str] = frozenset()
    # Filled by build_tables, index i = the first property still allowed (len: none left):
    next_required: list[int] = field(default_factory=list)  # first required index >= i
    tail_after_entries: list[str | None] = field(default_factory=list)  # ", <required>..." + "}"
    tail_first: list[str | None] = field(default_factory=list)  # the same with no entry written yet
    entry_then_tail: list[str | None] = field(default_factory=list)  # one more entry, then the tail

    def children(self) -> Iterable[Shape]:
        yield from (p.shape for p in self.properties)
        if self.additional is not None:
            yield self.additional

    def compute_min(self) -> str | None:
        entries = [p.entry() for p in self.properties if p.required]
        return join("{", *(join(", " if i else "", e) for i, e in enumerate(entries)), "}")

    def additional_text(self) -> str | None:
        return None if self.additional is None else self.additional.min_text

    def additional_allowed(self, index: int) -> bool:
        return self.additional is not None and self.next_required[index] == len(self.properties)

    def window(self, index: int) -> range:
        """The properties that may come next: up to and with the first required one."""
        return range(index, min(self.next_required[index] + 1, len(self.properties)))

    def build_tables(self) -> None:
        n = len(self.properties)
        self.next_required = [n] * (n + 1)
        self.tail_after_entries = ["}"] * (n + 1)
        self.tail_first = ["}"] * (n + 1)
        for i in range(n - 1, -1, -1):
            p = self.properties[i]
            self.next_required[i] = i if p.required else self.next_required[i + 1]
            after, first = self.tail_after_entries[i + 1], self.tail_first[i + 1]
            self.tail_after_entries[i] = join(", ", p.entry(), after) if p.required else after
            self.tail_first[i] = join(p.entry(), "" if first == "}" else ", ", first) if p.required else first
        self.entry_then_tail = [join('"', self.key_completion("", i)) for i in range(n + 1)]

    def key_completion(self, typed: str, index: int, closed_typed: str | None = None) -> str | None:
        """What ends a key begun as `typed` (raw, between the quotes) and the object after it.
        `closed_typed`: `typed` with a pending escape finished, for an additional key."""
        best = None
        for j in self.window(index):
            p = self.properties[j]
            if p.key.startswith(typed):
                best = shorter(best, join(p.key[len(typed) :], '": ', p.shape.min_text, self.tail_after_entries[j + 1]))
        if self.additional_allowed(index):
            key = fresh_key(typed if closed_typed is None else closed_typed, self.keys)
            best = shorter(best, join(key[len(typed) :], '": ', self.additional_text(), "}"))
        return best

    def step_growth(self) -> int:
        entries = [p.entry() for p in self.properties]
        if self.additional is not None:
            entries.append(join('"', fresh_key("", self.keys), 'x": ', self.additional.min_text))
        return 4 + max((len(e) for e in entries if e is not None), default=0)


@dataclass(eq=False)
class Arr(Shape):
    """`prefix` items (prefixItems), then `items` (None: no more), between min and max items."""

    prefix: tuple[Shape, ...] = ()
    items: Shape | None = None
    min_items: int = 0
    max_items: int | None = None
    tail_after: list[str | None] = field(default_factory=list)  # index k: what closes after k items

    def children(self) -> Iterable[Shape]:
        yield from self.prefix
        if self.items is not None:
            yield self.items

    def item(self, index: int) -> Shape | None:
        if self.max_items is not None and index >= self.max_items:
            return None
        return self.prefix[index] if index < len(self.prefix) else self.items

    def item_text(self, index: int) -> str | None:
        shape = self.item(index)
        return None if shape is None else shape.min_text

    def compute_min(self) -> str | None:
        return join("[", *(join(", " if k else "", self.item_text(k)) for k in range(self.min_items)), "]")

    def build_tables(self) -> None:
        self.tail_after = ["]"] * (self.min_items + 1)
        for k in range(self.min_items - 1, -1, -1):
            self.tail_after[k] = join(", " if k else "", self.item_text(k), self.tail_after[k + 1])

    def tail(self, count: int) -> str | None:
        """What closes the array once `count` items (and no separator after them) are written; for
        0, just after the `[`."""
        return self.tail_after[min(count, self.min_items)]

    def step_growth(self) -> int:
        mins = [s.min_text for s in self.children()]
        return 2 + max((len(m) for m in mins if m is not None), default=0)
