"""Tool calls and JSON answers through the engine: the tiny dummy model (random weights) under
grammar constraints must still produce calls and JSON that validate against their schemas."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from museserve.config import PoolConfig
from museserve.domain import (
    FinishReason,
    Message,
    Mode,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
)
from museserve.engine.engine import MuseEngine
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.support import prepared_request

SCHEMAS = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["city", "unit"],
    },
    "place_order": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "sku": {"enum": ["a1", "b2", "c3"]},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                    },
                    "required": ["sku", "qty"],
                },
                "minItems": 1,
                "maxItems": 3,
            },
            "express": {"type": "boolean"},
        },
        "required": ["items", "express"],
    },
    "move": {
        "type": "object",
        "properties": {
            "to": {"$ref": "#/$defs/point"},
            "speed": {"type": "number", "minimum": 0, "maximum": 5},
        },
        "required": ["to", "speed"],
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1}, "y": {"enum": [0, 1]}},
            }
        },
    },
    "ping": {"type": "object", "properties": {}},
}
TOOLS = tuple(ToolSpec(name, f"the {name} tool", json.dumps(schema)) for name, schema in SCHEMAS.items())
SEEDS = (0, 1, 2, 3)
# Random weights pick any allowed token: unbounded numbers and strings would run to the output
# limit, so every number and string above is bounded.


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def engine(tokenizer: MuseTokenizer):
    engine = build_engine(
        PoolConfig(
            name="muse-test",
            engine={
                "context_length": 4096,
                "max_output_tokens": 512,
                "max_running_requests": 8,
                "block_size": 4,
                "kv_cache_bytes": 4 << 20,
                "stream_interval_ms": 0,
            },
        ),
        MuseFormat(tokenizer),
    )
    yield engine
    engine.shutdown()


async def generate(engine: MuseEngine, **fields) -> tuple[str, str, list[ToolCall], FinishReason]:
    return fold([chunk async for chunk in engine.generate(prepared_request(**fields))])


def fold(chunks) -> tuple[str, str, list[ToolCall], FinishReason]:
    text = "".join(c.text for c in chunks)
    reasoning = "".join(c.reasoning for c in chunks)
    return text, reasoning, [call for c in chunks for call in c.tool_calls], chunks[-1].finish


def assert_valid_calls(calls: list[ToolCall], tools=TOOLS) -> None:
    assert calls
    schemas = {t.name: json.loads(t.parameters_json_schema) for t in tools}
    for call in calls:
        assert call.id.startswith("call_") and len(call.id) == len("call_") + 24
        jsonschema.validate(json.loads(call.arguments_json), schemas[call.name])


def sampled(request_id: str, seed: int, **fields) -> dict:
    return dict(request_id=request_id, temperature=1.0, seed=seed, max_output_tokens=400, **fields)


@pytest.mark.parametrize("seed", SEEDS)
async def test_required_calls_validate_against_their_schemas(engine: MuseEngine, seed: int) -> None:
    text, _, calls, finish = await generate(
        engine, **sampled(f"req-{seed}", seed, tools=TOOLS, tool_choice=ToolChoice(ToolChoiceKind.REQUIRED))
    )
    assert text == ""
    assert finish is FinishReason.TOOL_CALLS
    assert_valid_calls(calls)
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("seed", SEEDS[:2])
async def test_named_tool_gives_exactly_one_call_to_it(engine: MuseEngine, name: str, seed: int) -> None:
    choice = ToolChoice(ToolChoiceKind.NAMED, name)
    text, _, calls, finish = await generate(
        engine, **sampled(f"named-{name}-{seed}", seed, tools=TOOLS, tool_choice=choice)
    )
    assert (text, finish) == ("", FinishReason.TOOL_CALLS)
    assert [c.name for c in calls] == [name]
    assert_valid_calls(calls)


async def test_auto_without_tool_tokens_gives_text(engine: MuseEngine) -> None:
    text, _, calls, finish = await generate(
        engine, request_id="auto", tools=TOOLS, tool_choice=ToolChoice(ToolChoiceKind.AUTO), max_output_tokens=12
    )
    assert calls == [] and text and finish is FinishReason.LENGTH


@pytest.mark.parametrize("seed", SEEDS)
async def test_json_schema_answer_validates(engine: MuseEngine, seed: int) -> None:
    schema = SCHEMAS["place_order"]
    fmt = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(schema))
    text, _, calls, finish = await generate(engine, **sampled(f"json-{seed}", seed, response_format=fmt))
    assert calls == [] and finish is FinishReason.STOP
    jsonschema.validate(json.loads(text), schema)


async def test_thinking_reasons_freely_then_calls(engine: MuseEngine, tokenizer: MuseTokenizer) -> None:
    for seed in SEEDS:
        fields = sampled(f"think-{seed}", seed, tools=TOOLS, tool_choice=ToolChoice(ToolChoiceKind.REQUIRED))
        text, reasoning, calls, finish = await generate(engine, mode=Mode.THINKING, thinking_budget=12, **fields)
        assert reasoning and not reasoning.lstrip().startswith("{")  # the segment is not held to the grammar
        assert text == "" and finish is FinishReason.TOOL_CALLS
        assert_valid_calls(calls)


async def test_different_grammars_share_one_batch(engine: MuseEngine) -> None:
    weather, order = TOOLS[0], TOOLS[1]
    variants = [
        dict(tools=(weather,), tool_choice=ToolChoice(ToolChoiceKind.REQUIRED)),
        dict(tools=(order,), tool_choice=ToolChoice(ToolChoiceKind.REQUIRED)),
        dict(tools=TOOLS, tool_choice=ToolChoice(ToolChoiceKind.NAMED, "move")),
        dict(response_format=ResponseFormat(ResponseFormatKind.JSON_SCHEMA, weather.parameters_json_schema)),
        dict(),  # unconstrained, in the same steps
    ]

    requests = [generate(engine, **sampled(f"batch-{i}", i, **fields)) for i, fields in enumerate(variants)]
    results = await asyncio.gather(*requests)
    for fields, (_, _, calls, _) in zip(variants[:3], results[:3], strict=True):
        assert_valid_calls(calls, fields["tools"])
    assert [c.name for c in results[2][2]] == ["move"]
    jsonschema.validate(json.loads(results[3][0]), SCHEMAS["get_weather"])
    assert results[4][2] == [] and results[4][0]


async def test_tool_result_turn_is_rendered_and_the_model_calls_again(
    engine: MuseEngine, tokenizer: MuseTokenizer
) -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')
    messages = [
        Message(Role.USER, (TextPart("Weather in Paris?"),)),
        Message(Role.ASSISTANT, tool_calls=(call,)),
        Message(Role.TOOL, (TextPart("sunny, 21C"),), tool_call_id="call_1"),
        Message(Role.USER, (TextPart("And in Rome?"),)),
    ]
    ids = MuseFormat(tokenizer).render(messages, TOOLS, reasoning=False)
    rendered = tokenizer.decode(ids, skip_special_tokens=False)
    assert (
        '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}<|/tool_call|>'
        in rendered
    )
    assert '<|tool|>{"tool_call_id": "call_1"}\nsunny, 21C<|end|>' in rendered
    choice = ToolChoice(ToolChoiceKind.NAMED, "get_weather")
    _, _, calls, finish = await generate(
        engine, **sampled("after-result", 5, prompt=ids, tools=TOOLS, tool_choice=choice)
    )
    assert finish is FinishReason.TOOL_CALLS
    assert_valid_calls(calls)


async def test_repeated_schemas_compile_once(engine: MuseEngine) -> None:
    choice = ToolChoice(ToolChoiceKind.NAMED, "ping")
    await generate(engine, **sampled("ping-0", 0, tools=TOOLS, tool_choice=choice))
    compiles = engine.runner.constraints.grammars.compiles
    await generate(engine, **sampled("ping-1", 1, tools=TOOLS, tool_choice=choice))
    assert engine.runner.constraints.grammars.compiles == compiles
