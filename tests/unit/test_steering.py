"""Structured output that always parses: a JSON answer or a tool call steered to its shortest
completion before its budget runs out, driven by random logits (a model that never wants to
stop) through the real constraint, grammar and request state, as the engine runs them."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from museserve.checkpoint import read_checkpoint
from museserve.domain import FinishReason, ResponseFormat, ResponseFormatKind, ToolChoice, ToolChoiceKind, ToolSpec
from museserve.engine.request_state import RequestState
from museserve.errors import InvalidArgument
from museserve.preprocess.chat_format import ChatFormat
from museserve.preprocess.jinja_format import JinjaFormat
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer, Tokenizer
from museserve.structured.constraint import OutputConstraint
from museserve.structured.constraint_factory import ConstraintFactory
from tests.real_model import SMOLLM2_GGUF
from tests.support import prepared_request

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "zip", "country"],
        },
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "hobbies"],
}
WEATHER = ToolSpec(
    "get_weather",
    "",
    json.dumps(
        {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
        }
    ),  # fmt: skip
)


@pytest.fixture(scope="module")
def muse() -> MuseFormat:
    return MuseFormat(MuseTokenizer.load(None))


@pytest.fixture(scope="module")
def smollm2() -> JinjaFormat:
    info = read_checkpoint(SMOLLM2_GGUF, "gguf")
    return JinjaFormat(Tokenizer.from_json(info.tokenizer_json), info.chat_template, info.eos_token_ids)


def generate(fmt: ChatFormat, request, seed: int) -> tuple[RequestState, list[int]]:
    """Random logits (strings and numbers favoured to run long), the constraint's mask, sampling,
    then its check of the sampled token: the engine's steps, without a model."""
    factory = ConstraintFactory(fmt.tokenizer, fmt.markers)
    constraint: OutputConstraint = factory.build_now(request)
    state = RequestState(request, fmt.tokenizer, fmt.markers)
    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while state.finish is None:
        logits = constraint((), out, torch.randn(fmt.tokenizer.vocab_size, generator=generator) * 3)
        token = constraint.checked(int(torch.multinomial(logits.softmax(-1), 1, generator=generator)))
        out.append(token)
        state.append(token, steered=constraint.steered)
    factory.close()
    return state, out


def answer(state: RequestState) -> tuple[str, list]:
    chunk = state.take_chunk()
    return chunk.text, list(chunk.tool_calls)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [19, 24, 40])
def test_a_json_answer_parses_whatever_its_budget(muse: MuseFormat, seed: int, budget: int) -> None:
    fmt = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(PERSON))
    state, out = generate(muse, prepared_request(response_format=fmt, max_output_tokens=budget), seed)
    text, _ = answer(state)
    jsonschema.validate(json.loads(text), PERSON)
    assert state.output_tokens <= budget
    if state.finish is FinishReason.LENGTH:
        assert list(json.loads(text)) == [k for k in PERSON["properties"] if k in json.loads(text)]  # schema order


@pytest.mark.parametrize("seed", range(6))
def test_a_required_muse_call_parses_at_a_tight_budget(muse: MuseFormat, seed: int) -> None:
    request = prepared_request(tools=(WEATHER,), tool_choice=ToolChoice(ToolChoiceKind.REQUIRED), max_output_tokens=32)
    state, _ = generate(muse, request, seed)
    _, calls = answer(state)
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments_json), json.loads(WEATHER.parameters_json_schema))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget", [36, 48])
def test_a_required_text_marked_call_parses_at_a_tight_budget(smollm2: JinjaFormat, seed: int, budget: int) -> None:
    request = prepared_request(
        tools=(WEATHER,), tool_choice=ToolChoice(ToolChoiceKind.REQUIRED), max_output_tokens=budget
    )
    state, out = generate(smollm2, request, seed)
    text, calls = answer(state)
    assert len(calls) == 1 and calls[0].name == "get_weather" and not text.strip()
    jsonschema.validate(json.loads(calls[0].arguments_json), json.loads(WEATHER.parameters_json_schema))
    assert state.finish in (FinishReason.LENGTH, FinishReason.TOOL_CALLS) and state.output_tokens <= budget


def test_a_steered_answer_finishes_with_length(muse: MuseFormat) -> None:
    fmt = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(PERSON))
    state, out = generate(muse, prepared_request(response_format=fmt, max_output_tokens=19), 0)
    assert state.finish is FinishReason.LENGTH
    assert json.loads(answer(state)[0])


@pytest.mark.parametrize(
    ("fields", "what"),
    [
        ({"response_format": ResponseFormat(ResponseFormatKind.JSON_SCHEMA, json.dumps(PERSON))}, "JSON answer"),
        ({"tools": (WEATHER,), "tool_choice": ToolChoice(ToolChoiceKind.NAMED, "get_weather")}, "tool call"),
    ],
)
def test_a_budget_below_the_shortest_answer_is_refused(muse: MuseFormat, fields: dict, what: str) -> None:
    factory = ConstraintFactory(muse.tokenizer, muse.markers)
    with pytest.raises(InvalidArgument) as refused:
        factory.build_now(prepared_request(max_output_tokens=4, **fields))
    assert refused.value.field == "sampling.max_output_tokens" and what in str(refused.value)
    factory.close()
