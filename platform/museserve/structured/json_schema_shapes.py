"""Reads a JSON Schema into shapes (`json_shapes`) the way xgrammar 0.2.8 reads it.

Written as xgrammar writes them: `type` (one or a list), `enum`, `const`, `anyOf`, `oneOf` (as anyOf),
local `$ref` (`#`, `#/$defs/...`, `#/definitions/...`, any JSON pointer into the document),
`properties`, `required`, `additionalProperties`, `items`, `prefixItems`, `minItems`, `maxItems`,
`minLength`, `maxLength`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`.
Annotations and unknown keywords are ignored, as JSON Schema ignores them. An `enum`/`const` beside
`type` keeps only the members of that type (xgrammar admits them all; validation would not).

Followed but never written (`Opaque`): a value whose schema uses another validation keyword
(`pattern`, `format`, `multipleOf`, `uniqueItems`, `allOf`, `not`, `patternProperties`, ...), a
`required` name missing from `properties`, `enum`/`const` beside other constraints, `anyOf` or `$ref`
beside other constraints, and keywords that constrain a type with no `type` to say which. xgrammar
ignores some of these and enforces others; either way no text can be promised to validate.

xgrammar's defaults, mirrored: an object admits further keys (after its properties, none of theirs)
when `additionalProperties` says so, or when strict mode is off, or when the schema is a bare
`{"type": "object"}` (with annotations only); the same for an array's items after `prefixItems`.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from museserve.structured.json_container_shapes import Arr, Obj, Property
from museserve.structured.json_numbers import NumberBounds
from museserve.structured.json_shapes import (
    Framed,
    Literals,
    Number,
    Opaque,
    Shape,
    Text,
    Union,
    quote,
    reachable,
    serialize,
)

ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "$comment", "readOnly", "writeOnly", "$schema"}
)
HANDLED = frozenset(
    {
        "type", "enum", "const", "anyOf", "oneOf", "$ref", "properties", "required", "additionalProperties",
        "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip
UNSUPPORTED = frozenset(
    {
        "pattern", "format", "multipleOf", "uniqueItems", "minProperties", "maxProperties", "patternProperties",
        "propertyNames", "dependentRequired", "dependentSchemas", "dependencies", "if", "then", "else", "not",
        "allOf", "contains", "minContains", "maxContains", "unevaluatedItems", "unevaluatedProperties",
        "additionalItems", "$dynamicRef", "$recursiveRef", "contentSchema",
    }
)  # fmt: skip
_OBJECT_KEYS = ("properties", "additionalProperties")
_ARRAY_KEYS = ("items", "prefixItems")
_TYPES = {"null": type(None), "boolean": bool, "object": dict, "array": list, "string": str}


def any_value() -> Union:
    """Any JSON value, as xgrammar's `basic_any`."""
    value = Union()
    value.alternatives = (
        Number(),
        Text(),
        Literals(texts=("null",)),
        Literals(texts=("false", "true")),
        Arr(items=value),
        Obj(additional=value),
    )
    return value


def tool_calls_shape(tools: Mapping[str, Mapping[str, Any] | None], strict: bool = True) -> Shape:
    """`{"name": "<tool>", "arguments": <object>}` for any of `tools`, as GrammarCache builds it."""
    calls = []
    for name, schema in tools.items():
        arguments = {"type": "object", **(schema or {})}
        head = '{"name": ' + quote(name) + ', "arguments": '
        calls.append(Framed(head=head, inner=SchemaReader(arguments, strict).root, tail="}"))
    return Union(alternatives=tuple(calls))


class SchemaReader:
    def __init__(self, schema: Mapping[str, Any] | bool, strict: bool):
        self._document = schema
        self._strict = strict
        self._any = any_value()
        # (id of a schema node, type or None) -> its shape; containers are stored before their
        # members are read, so a recursive $ref comes back to the same shape.
        self._read: dict[tuple[int, str | None], Shape] = {}
        self._following: set[int] = set()  # $ref nodes being resolved
        self.root = _flatten_unions(self.read(schema))

    def read(self, node: Any) -> Shape:
        if node is True or node == {}:
            return self._any
        if not isinstance(node, Mapping):
            return Union()  # `false` admits nothing
        key = (id(node), None)
        if key not in self._read:
            self._read[key] = self._read_node(node)
        return self._read[key]

    def _read_node(self, node: Mapping[str, Any]) -> Shape:
        constraints = set(node) & HANDLED
        if set(node) & UNSUPPORTED:
            return Opaque(inner=self._any)
        if "$ref" in node:
            target = self._resolve(node["$ref"])
            if constraints != {"$ref"} or target is None or id(node) in self._following:
                return Opaque(inner=self._any)  # beside other keywords, remote, or a loop of bare $refs
            self._following.add(id(node))
            shape = self.read(target)
            self._following.discard(id(node))
            return shape
        if "enum" in node or "const" in node:
            return self._literals(node, constraints)
        if "anyOf" in node or "oneOf" in node:
            alternatives = node.get("anyOf", node.get("oneOf"))
            if len(constraints) > 1 or not alternatives:
                return Opaque(inner=self._any)
            union = self._read[(id(node), None)] = Union()
            union.alternatives = tuple(self.read(a) for a in alternatives)
            return union
        types = node.get("type")
        if isinstance(types, list):
            union = self._read[(id(node), None)] = Union()
            union.alternatives = tuple(self._typed(node, t) for t in types)
            return union
        if types is None:
            if any(k in node for k in _OBJECT_KEYS):
                return self._typed(node, "object")
            if any(k in node for k in _ARRAY_KEYS):
                return self._typed(node, "array")
            return Opaque(inner=self._any) if constraints else self._any
        return self._typed(node, types)

    def _typed(self, node: Mapping[str, Any], kind: str) -> Shape:
        key = (id(node), kind)
        if key not in self._read:
            if kind == "object" and set(node.get("required", ())) <= set(node.get("properties", {})):
                self._read[key] = shape = Obj()  # stored first: a $ref inside comes back to it
                self._fill_object(shape, node)
            elif kind == "array" and not isinstance(node.get("items"), list):
                self._read[key] = shape = Arr()
                self._fill_array(shape, node)
            else:  # a scalar; or a `required` name missing from `properties` (xgrammar drops it,
                # validation does not), or draft 4's tuple `items`
                self._read[key] = self._scalar(node, kind)
        return self._read[key]

    def _scalar(self, node: Mapping[str, Any], kind: str) -> Shape:
        if kind == "string":
            return Text(min_length=node.get("minLength", 0), max_length=node.get("maxLength"))
        if kind in ("integer", "number"):
            return self._number(node, kind == "integer")
        if kind == "boolean":
            return Literals(texts=("false", "true"))
        return Literals(texts=("null",)) if kind == "null" else Opaque(inner=self._any)

    def _number(self, node: Mapping[str, Any], integer: bool) -> Shape:
        keys = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
        values = [node.get(k) for k in keys]
        if not any(v is not None for v in values):
            return Number(integer=integer)
        if any(isinstance(v, bool) for v in values):
            return Opaque(inner=self._any)  # draft 4's boolean exclusives: xgrammar refuses them
        low, low_x, high, high_x = (None if v is None else Fraction(repr(v)) for v in values)
        low_exclusive = low_x is not None and (low is None or low_x >= low)
        high_exclusive = high_x is not None and (high is None or high_x <= high)
        bounds = NumberBounds(
            low=low_x if low_exclusive else low,
            high=high_x if high_exclusive else high,
            low_exclusive=low_exclusive,
            high_exclusive=high_exclusive,
        )
        return Number(integer=integer, bounds=bounds)

    def _fill_object(self, shape: Obj, node: Mapping[str, Any]) -> None:
        required = set(node.get("required", ()))
        properties: Mapping[str, Any] = node.get("properties", {})
        shape.properties = tuple(Property(quote(k)[1:-1], self.read(v), k in required) for k, v in properties.items())
        shape.keys = frozenset(p.key for p in shape.properties)
        shape.additional = self._more(node, "additionalProperties")

    def _fill_array(self, shape: Arr, node: Mapping[str, Any]) -> None:
        shape.prefix = tuple(self.read(s) for s in node.get("prefixItems", ()))
        shape.items = self._more(node, "items")
        shape.min_items = node.get("minItems", 0)
        shape.max_items = node.get("maxItems")

    def _more(self, node: Mapping[str, Any], keyword: str) -> Shape | None:
        """What further members (past the listed ones) may be; None: no more."""
        if keyword in node:
            return None if node[keyword] is False else self.read(node[keyword])
        bare = set(node) - {"type"} <= ANNOTATIONS
        return self._any if bare or not self._strict else None

    def _literals(self, node: Mapping[str, Any], constraints: set[str]) -> Shape:
        if constraints - {"enum", "const", "type"} or ("enum" in node and "const" in node):
            return Opaque(inner=self._any)
        values = [node["const"]] if "const" in node else list(node["enum"])
        types = node.get("type")
        if types is not None:
            types = types if isinstance(types, list) else [types]
            values = [v for v in values if any(_is_type(v, t) for t in types)]
        texts = sorted(dict.fromkeys(map(serialize, values)), key=len)
        return Literals(texts=tuple(texts)) if texts else Opaque(inner=self._any)

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        node: Any = self._document
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                return None
        return node


def _is_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind in ("integer", "number"):
        return isinstance(value, int | float) and (kind == "number" or float(value).is_integer())
    expected = _TYPES.get(kind)
    return expected is not None and isinstance(value, expected)


def _flatten_unions(root: Shape) -> Shape:
    """Inlines unions into the unions that hold them, so a value's alternatives are one list."""
    for shape in list(reachable(root)):
        if isinstance(shape, Union):
            shape.alternatives = tuple(_leaves(shape, set()))
    return root


def _leaves(union: Union, seen: set[int]) -> list[Shape]:
    seen.add(id(union))
    leaves: list[Shape] = []
    for alternative in union.alternatives:
        if isinstance(alternative, Union):
            if id(alternative) not in seen:
                leaves.extend(a for a in _leaves(alternative, seen) if a not in leaves)
        elif alternative not in leaves:
            leaves.append(alternative)
    return leaves
