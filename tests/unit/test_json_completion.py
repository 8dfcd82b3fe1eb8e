"""JsonCompletion and ToolCallCompletion against the grammars the engine compiles (GrammarCache, real
xgrammar): texts sampled token by token under each grammar are cut at every character, and every
prefix plus its shortest() must be accepted whole by a fresh matcher, end it, parse and validate."""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import numpy as np
import pytest

from museserve.domain import ToolSpec
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.structured.grammar import GrammarCache
from museserve.structured.json_completion import JsonCompletion, ToolCallCompletion

xgr = pytest.importorskip("xgrammar")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 8},
        "age": {"type": "integer", "minimum": 18, "maximum": 130},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 1, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "integer", "exclusiveMinimum": 999}},
            "required": ["zip"],
        },
        "role": {"enum": ["admin", "user", "guest", "administrator"]},
    },
    "required": ["name", "tags", "address", "role"],
}
SHAPES = {
    "type": "object",
    "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "string", "minLength": 3}, {"type": "null"}]},
        "shape": {
            "anyOf": [
                {"type": "object", "properties": {"r": {"type": "number", "minimum": 0}}, "required": ["r"]},
                {
                    "type": "object",
                    "properties": {"r": {"type": "integer"}, "h": {"type": "number"}},
                    "required": ["h"],
                },
            ]
        },
        "id": {"oneOf": [{"type": "string", "maxLength": 3}, {"type": "integer", "maximum": -1}]},
        "either": {"type": ["integer", "number", "null"]},
    },
    "required": ["value", "shape", "id"],
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "label": {"type": "string", "maxLength": 4},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["label"],
        }
    },
    "$ref": "#/$defs/node",
}
NUMBERS = {
    "type": "object",
    "properties": {
        "x": {"type": "number", "minimum": -2.5, "maximum": 10},
        "y": {"type": "number", "exclusiveMinimum": 0},
        "z": {"type": "integer", "maximum": -3},
        "w": {"type": "number"},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "minItems": 2},
    },
    "required": ["x", "y", "z", "w", "pair"],
}
CONSTANTS = {
    "type": "object",
    "properties": {
        "kind": {"const": "point"},
        "v": {"enum": [1, 2.5, None, True, "x\ty", [1, 2], {"a": "b"}, "é"]},
        "flag": {"type": "boolean"},
    },
    "required": ["kind", "v"],
}
KEYS = {
    "type": "object",
    "properties": {
        "a": {"type": "integer"},
        "ab": {"type": "string"},
        'say "hi"': {"type": "boolean"},
        "é": {"type": "null"},
        "abc": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
    },
    "required": ["abc"],
}
ANYTHING_INSIDE = {
    "type": "object",
    "properties": {"meta": {}, "n": {"type": ["integer", "null"]}},
    "required": ["meta"],
}
EXTRA_BOOLEANS = {
    "type": "object",
    "properties": {"id": {"type": "integer"}},
    "additionalProperties": {"type": "boolean"},
}
WEATHER = {
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["city", "unit"],
}
SEARCH = {"properties": {"q": {"type": "string"}, "limit": {"type": "integer", "minimum": 1}}, "required": ["q"]}
TOOLS_3 = {"get_weather": WEATHER, "get_time": {"properties": {"tz": {"type": "string"}}}, "get": None}

# (id, schema or tools, strict, is a tool-call set)
CASES: list[tuple[str, Any, bool, bool]] = [
    ("person", PERSON, True, False),
    ("person_loose", PERSON, False, False),
    ("shapes", SHAPES, True, False),
    ("tree", TREE, True, False),
    ("numbers", NUMBERS, True, False),
    ("numbers_loose", NUMBERS, False, False),
    ("constants", CONSTANTS, True, False),
    ("keys", KEYS, True, False),
    ("keys_loose", KEYS, False, False),
    ("anything_inside", ANYTHING_INSIDE, True, False),
    ("extra_booleans", EXTRA_BOOLEANS, True, False),
    ("json_object", None, True, False),
    ("tools_1", {"search": SEARCH}, True, True),
    ("tools_3", TOOLS_3, True, True),
]
TEXTS_PER_CASE = 10


@pytest.fixture(scope="module")
def tok() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def grammars(tok: MuseTokenizer) -> GrammarCache:
    return GrammarCache(tok, stop_ids=[tok.eos_id])


@pytest.fixture(scope="module")
def token_classes(tok: MuseTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Tokens that close something (favoured, so samples end) and tokens with escape or number signs."""
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    closers = np.array([any(c in t for c in '"}],') for t in texts])
    curious = np.array([any(c in t for c in "\\-.eE+u") for t in texts])
    return closers, curious


def _compile(grammars: GrammarCache, schema: Any, strict: bool, tools: bool) -> Any:
    if tools:
        specs = [ToolSpec(name, "", json.dumps(s) if s is not None else "") for name, s in schema.items()]
        return grammars.tool_calls(specs, [f"tools[{i}]" for i in range(len(specs))])
    return grammars.json(None if schema is None else json.dumps(schema), strict)


def _new_completion(schema: Any, strict: bool, tools: bool) -> JsonCompletion | ToolCallCompletion:
    return ToolCallCompletion(schema, strict) if tools else JsonCompletion(schema, strict)


def _validator(schema: Any, tools: bool) -> Callable[[Any], None]:
    if not tools:
        check = jsonschema.Draft202012Validator(schema if schema is not None else {"type": "object"})
        return check.validate
    checks = {n: jsonschema.Draft202012Validator({"type": "object", **(s or {})}) for n, s in schema.items()}

    def validate_call(value: Any) -> None:
        assert list(value) == ["name", "arguments"]
        checks[value["name"]].validate(value["arguments"])

    return validate_call


def sample_texts(compiled: Any, tok: MuseTokenizer, classes: tuple[np.ndarray, np.ndarray], seed: int) -> list[str]:
    """Distinct random texts the grammar accepts, token by token: 40% of picks among closing tokens,
    10% among escape and number signs, the rest uniform; an end, where allowed, one time in four."""
    rng = np.random.default_rng(seed)
    bitmask = xgr.allocate_token_bitmask(1, tok.vocab_size)
    closers, curious = classes
    texts: set[str] = set()
    for _ in range(4 * TEXTS_PER_CASE):
        matcher, ids = xgr.GrammarMatcher(compiled), []
        for _ in range(160):
            matcher.fill_next_token_bitmask(bitmask)
            bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")[: tok.vocab_size]
            allowed = bits.astype(bool)
            may_end, allowed[tok.eos_id] = allowed[tok.eos_id], False
            if may_end and (rng.random() < 0.25 or not allowed.any()):
                matcher.accept_token(tok.eos_id)
                break
            roll = rng.random()
            preferred = allowed & (closers if roll < 0.4 else curious if roll < 0.5 else allowed)
            pool = np.flatnonzero(preferred if preferred.any() else allowed)
            token = int(rng.choice(pool))
            assert matcher.accept_token(token)
            ids.append(token)
        if matcher.is_terminated():
            texts.add(tok.decode(ids))
        if len(texts) == TEXTS_PER_CASE:
            break
    return sorted(texts)


def check_every_prefix(
    text: str, compiled: Any, completion: Any, validate: Callable[[Any], None], eos: int
) -> list[str]:
    """Feeds `text` a character at a time; each prefix + shortest() must be a whole, valid instance."""
    tails = []
    for i in range(len(text) + 1):
        if i:
            completion.feed(text[i - 1])
        tail = completion.shortest()
        assert tail is not None, f"no completion after {text[:i]!r}"
        whole = text[:i] + tail
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_string(whole), f"grammar refuses {text[:i]!r} + {tail!r}"
        assert matcher.accept_token(eos) and matcher.is_terminated(), f"{whole!r} does not end the grammar"
        validate(json.loads(whole))
        tails.append(tail)
    return tails


@pytest.mark.parametrize(("name", "schema", "strict", "tools"), CASES, ids=[c[0] for c in CASES])
def test_every_prefix_of_sampled_texts_completes(name, schema, strict, tools, grammars, tok, token_classes) -> None:
    compiled = _compile(grammars, schema, strict, tools)
    validate = _validator(schema, tools)
    texts = sample_texts(compiled, tok, token_classes, seed=zlib.crc32(name.encode()))
    for seed, text in enumerate(texts):
        completion = _new_completion(schema, strict, tools)
        assert completion.shortest() is not None and len(completion.shortest()) == completion.minimal_length()
        tails = check_every_prefix(text, compiled, completion, validate, tok.eos_id)
        assert tails[-1] == "" and completion.complete
        growth = max(len(b) - len(a) for a, b in zip(tails, tails[1:], strict=False))
        assert growth <= completion.max_step_growth(), (text, growth)
        chunked = _new_completion(schema, strict, tools)  # any split gives the same answers
        rng, at = random.Random(seed), 0
        while at < len(text):
            step = rng.randint(1, 7)
            chunked.feed(text[at : at + step])
            at = min(at + step, len(text))
            assert chunked.shortest() == tails[at]


HAND_TEXTS = {
    "person": [
        '{"name": "éA", "email": "\\u00e9\\\\\\"\\ud83d/", "tags": ["a", ""], "address": {"zip": 1000}, "role": "user"}'
    ],
    "numbers": ['{"x": -2.5, "y": 0.000001, "z": -10, "w": -0.5e+12, "pair": [-7, true]}'],
    "tree": [
        '{"label": "root", "children": [{"label": "a", "children": [{"label": "b"}, {"label": "c", "children": []}]}, '
        '{"label": "d"}]}'
    ],
    "shapes": [
        '{"value": 7, "shape": {"r": 3, "h": 1.5}, "id": -4, "either": 2.5}',
        '{"value": null, "shape": {"h": -1}, "id": "ab", "either": -0.5e-3}',
        '{"value": "abc", "shape": {"r": 0.25}, "id": "", "either": null}',
    ],
    "json_object": ['{"": -0.0e-1, "\\\\": [true, null, {"k\\"": "\\ud800"}]}'],
}


@pytest.mark.parametrize("name", sorted(HAND_TEXTS))
def test_every_prefix_of_hand_written_texts_completes(name: str, grammars, tok) -> None:
    _, schema, strict, tools = next(c for c in CASES if c[0] == name)
    compiled = _compile(grammars, schema, strict, tools)
    for text in HAND_TEXTS[name]:
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_string(text) and matcher.accept_token(tok.eos_id)
        tails = check_every_prefix(
            text, compiled, _new_completion(schema, strict, tools), _validator(schema, tools), tok.eos_id
        )
        assert tails[-1] == ""


def completed(schema: Mapping[str, Any] | None, text: str, strict: bool = True) -> str | None:
    completion = JsonCompletion(schema, strict)
    completion.feed(text)
    return completion.shortest()


def test_minimal_instances_keep_required_properties_in_schema_order() -> None:
    assert completed(PERSON, "") == '{"name": "aa", "tags": [""], "address": {"zip": 1000}, "role": "user"}'
    later_first = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "required": ["a", "b"]}
    assert completed(later_first, "") == '{"b": 0, "a": ""}'
    assert completed(TREE, "") == '{"label": ""}'
    assert completed(NUMBERS, "") == '{"x": 0, "y": 1, "z": -3, "w": 0, "pair": [0, false]}'
    assert completed(CONSTANTS, "") == '{"kind": "point", "v": 1}'
    assert completed(None, "") == "{}"
    assert completed({}, "") == "0"
    assert completed({"type": "array", "items": {"type": "null"}, "minItems": 3}, "") == "[null, null, null]"
    assert completed({"enum": [{"a": [1, 2]}, "long string"]}, "") == '{"a":[1,2]}'


def test_partial_states_close() -> None:
    assert completed(PERSON, '{"na') == 'me": "aa", "tags": [""], "address": {"zip": 1000}, "role": "user"}'
    assert completed(PERSON, '{"name"') == ': "aa", "tags": [""], "address": {"zip": 1000}, "role": "user"}'
    assert completed(PERSON, '{"name": "xy", "a') == 'ge": 18, "tags": [""], "address": {"zip": 1000}, "role": "user"}'
    assert completed(PERSON, '{"name": "xy", "tags": ["a"], "address": {"zip": 1000}, "role": "adm') == 'in"}'
    assert completed(PERSON, '{"name": "xy", "tags": ["a"], "address": {"zip": 1000}, "role": "administ') == 'rator"}'
    assert completed(PERSON, '{"name": "xy", "age": 1') == '8, "tags": [""], "address": {"zip": 1000}, "role": "user"}'
    string = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    assert completed(string, '{"s": "a\\') == '\\"}'
    assert completed(string, '{"s": "a\\u12') == '00"}'
    number = {
        "type": "object",
        "properties": {"n": {"type": "number"}, "i": {"type": "integer"}},
        "required": ["n", "i"],
    }
    assert completed(number, '{"n": -') == '0, "i": 0}'
    assert completed(number, '{"n": 1.') == '0, "i": 0}'
    assert completed(number, '{"n": 1e') == '0, "i": 0}'
    assert completed(number, '{"n": 1e+') == '0, "i": 0}'
    assert completed(number, '{"n": 1, "i": -') == "1}"
    assert completed({"type": "array", "items": {"type": "boolean"}}, "[tru") == "e]"


def test_keys_under_strict_and_loose_modes() -> None:
    abc = {"properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}}}
    assert completed(abc, '{"b": "", "') == 'c": false}'  # strict: only the properties after "b"
    assert completed(abc, '{"b": "", "', strict=False) == '": 0}'  # loose: any other key
    assert completed(abc, '{"b": "", "b', strict=False) == 'a": 0}'  # "b" is taken: "ba" is not
    assert completed(EXTRA_BOOLEANS, '{"id": 3, "xy') == '": false}'
    assert completed(None, '{"a": [1, {"b') == '": 0}]}'
    assert completed(ANYTHING_INSIDE, '{"meta": {"k": "v\\u0') == '000"}}'


@pytest.mark.parametrize(
    "constant", [0.1, 1e20, 1.0, -0.0, 2**70, "\x01\x7f\u2028é", {"b": 1, "a": [None, True]}, []], ids=repr
)
def test_constants_are_written_as_xgrammar_writes_them(constant: Any, grammars, tok) -> None:
    schema = {"type": "object", "properties": {"c": {"const": constant}}, "required": ["c"]}
    shortest = JsonCompletion(schema).shortest()
    matcher = xgr.GrammarMatcher(grammars.json(json.dumps(schema)))
    assert matcher.accept_string(shortest) and matcher.accept_token(tok.eos_id), shortest
    assert json.loads(shortest) == {"c": constant}


def test_tool_calls_complete_to_the_shortest_tool() -> None:
    one = ToolCallCompletion({"search": SEARCH})
    assert one.shortest() == '{"name": "search", "arguments": {"q": ""}}'
    three = ToolCallCompletion(TOOLS_3)
    assert three.shortest() == '{"name": "get", "arguments": {}}' and three.minimal_length() == len(three.shortest())
    three.feed('{"name": "get_w')
    assert three.shortest() == 'eather", "arguments": {"city": "", "unit": "celsius"}}'
    three.feed('eather", "arguments": {"city": "Oslo", "unit": "f')
    assert three.shortest() == 'ahrenheit"}}'
    assert one.minimal_length() == len(one.shortest())


def test_values_it_cannot_write_answer_none_only_while_open() -> None:
    coded = {
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}, "n": {"type": "integer"}},
        "required": ["code", "n"],
    }
    completion = JsonCompletion(coded)
    assert completion.shortest() is None and completion.minimal_length() == 0
    completion.feed('{"code": "AB')
    assert completion.shortest() is None
    completion.feed('C"')
    assert completion.shortest() == ', "n": 0}'
    either = JsonCompletion({"anyOf": [{"type": "string", "pattern": "^a"}, {"type": "integer", "minimum": 3}]})
    assert either.shortest() == "3"
    either.feed('"a')
    assert either.shortest() is None
    either.feed('b"')
    assert either.shortest() == ""
    optional = JsonCompletion({"properties": {"code": {"type": "string", "format": "date"}}})
    assert optional.shortest() == "{}"
    optional.feed('{"code": "20')
    assert optional.shortest() is None


def test_minimal_length_and_step_growth() -> None:
    assert JsonCompletion(PERSON).minimal_length() == len(completed(PERSON, ""))
    assert JsonCompletion(None).minimal_length() == 2
    assert JsonCompletion({"type": "boolean"}).minimal_length() == 5
    assert JsonCompletion({"type": "string", "minLength": 4}).minimal_length() == 6
    deep = {"properties": {"o": {"properties": {"x": {"type": "string", "minLength": 30}}, "required": ["x"]}}}
    completion = JsonCompletion(deep)
    completion.feed('{"')  # opening the optional property adds its whole shortest value
    assert len(completion.shortest()) - 1 > completion.minimal_length()
    assert len(completion.shortest()) - 1 <= completion.max_step_growth()


def test_cost_per_call_is_printed_not_asserted() -> None:
    text = '{"name": "Ada", "age": 36, "tags": ["math", "poet"], "address": {"city": "London", "zip": 1815}, "role": "admin"}'
    schema = {**PERSON, "title": "not cached yet"}
    started = time.perf_counter()
    JsonCompletion(schema)
    built = time.perf_counter() - started
    feeds, shortests = [], []
    for _ in range(20):
        completion = JsonCompletion(schema)
        for c in text:
            started = time.perf_counter()
            completion.feed(c)
            feeds.append(time.perf_counter() - started)
            started = time.perf_counter()
            completion.shortest()
            shortests.append(time.perf_counter() - started)
        assert completion.complete
    us = {name: 1e6 * float(np.median(t)) for name, t in (("feed", feeds), ("shortest", shortests))}
    print(
        f"\nfirst build {built * 1e6:.0f} us; median per character: feed {us['feed']:.2f} us, shortest {us['shortest']:.2f} us"
    )
