"""The pieces behind tool calls and JSON answers, without a model: the constraint driven by
random logits, span parsing, request state, validation, conversion and gateway events."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from museserve.api.convert import request_from_pb
from museserve.config import EngineConfig, PoolConfig, RequestLimits
from museserve.domain import (
    ChatRequest,
    FinishReason,
    Identity,
    Message,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolCall,
    ToolCallEvent,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
)
from museserve.engine.request_state import RequestState
from museserve.engine.tool_calls import TokenSpans
from museserve.errors import InvalidArgument
from museserve.gateway.events import StreamEvents
from museserve.gateway.validation import validate_request
from museserve.messages import GenerationChunk
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.preprocessor import offered_tools
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.structured.constraint import OutputConstraint, Phase
from museserve.structured.constraint_factory import ConstraintFactory
from museserve.v1 import chat_pb2 as pb
from tests.support import prepared_request

LOOKUP = ToolSpec(
    "lookup", "", json.dumps({"properties": {"q": {"type": "string", "maxLength": 6}}, "required": ["q"]})
)
REQUIRED = ToolChoice(ToolChoiceKind.REQUIRED)


@pytest.fixture(scope="module")
def tok() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def factory(tok: MuseTokenizer) -> ConstraintFactory:
    return ConstraintFactory(tok, MuseFormat(tok).markers)


def drive(
    constraint: OutputConstraint, tok: MuseTokenizer, seed: int, first: int | None = None, favour: str = ""
) -> list[int]:
    """Samples from random logits through the constraint until an end token (at most 300 steps);
    tokens holding a character of `favour` get a boost, to end unbounded strings sooner."""
    generator = torch.Generator().manual_seed(seed)
    boost = torch.tensor([4.0 * any(c in tok.decode([i]) for c in favour) for i in range(tok.vocab_size)])
    out: list[int] = []
    for _ in range(300):
        logits = torch.randn(tok.vocab_size, generator=generator) + boost
        if first is not None and not out:
            logits[first] += 50.0
        logits = constraint((), out, logits)
        out.append(int(torch.multinomial(logits.softmax(-1), 1, generator=generator)))
        if out[-1] in (tok.end_id, tok.eos_id):
            return out
    raise AssertionError("the constraint never ended the answer")


@pytest.mark.parametrize("seed", range(4))
def test_auto_call_opened_by_the_model_always_parses(factory, tok: MuseTokenizer, seed: int) -> None:
    request = prepared_request(tools=(LOOKUP,), tool_choice=ToolChoice(ToolChoiceKind.AUTO))
    out = drive(factory.build_now(request), tok, seed, first=tok.tool_call_id)
    state = RequestState(prepared_request(tools=(LOOKUP,), max_output_tokens=400), tok, MuseFormat(tok).markers)
    for token in out:
        state.append(token)
    chunk = state.take_chunk()
    assert chunk.finish is FinishReason.TOOL_CALLS and chunk.text == ""
    assert [c.name for c in chunk.tool_calls] == ["lookup"] * len(chunk.tool_calls)
    for call in chunk.tool_calls:
        jsonschema.validate(json.loads(call.arguments_json), json.loads(LOOKUP.parameters_json_schema))


def test_auto_text_never_holds_a_stray_call_end(factory, tok: MuseTokenizer) -> None:
    constraint = factory.build_now(prepared_request(tools=(LOOKUP,), tool_choice=ToolChoice(ToolChoiceKind.AUTO)))
    logits = constraint((), [500], torch.zeros(tok.vocab_size))
    assert constraint.phase is Phase.TEXT
    assert logits[tok.tool_call_end_id] == float("-inf") and logits[tok.tool_call_id] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_json_object_answer_parses(factory, tok: MuseTokenizer, seed: int) -> None:
    request = prepared_request(response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT))
    out = drive(factory.build_now(request), tok, seed, favour='"}')
    assert isinstance(json.loads(tok.decode(out[:-1])), dict)


def test_bounded_strings_admit_no_raw_control_characters(factory, tok: MuseTokenizer) -> None:
    constraint = factory.build_now(prepared_request(tools=(LOOKUP,), tool_choice=REQUIRED, max_output_tokens=64))
    prefix = [tok.tool_call_id, *tok.encode_text('{"name": "lookup", "arguments": {"q": "a')]
    logits = constraint((), prefix, torch.zeros(tok.vocab_size))
    raw_controls = [i for i in range(tok.vocab_size) if tok.decode([i]) in {chr(c) for c in range(32)}]
    assert raw_controls and all(logits[i] == float("-inf") for i in raw_controls)


def test_unsupported_schema_is_refused_naming_the_field(factory) -> None:
    odd = ToolSpec("odd", "", json.dumps({"properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}))
    with pytest.raises(InvalidArgument) as info:
        factory.build_now(prepared_request(tools=(LOOKUP, odd), tool_choice=REQUIRED))
    assert info.value.field == "tools[1].parameters_json_schema"


def test_spans_parse_keep_bad_text_and_flush_open_ones(tok: MuseTokenizer) -> None:
    spans = TokenSpans(tok, tok.tool_call_id, tok.tool_call_end_id)
    results = [spans.push(t) for t in [tok.tool_call_id, *tok.encode_text('{"name": "f"}'), tok.tool_call_end_id]]
    assert isinstance(results[-1], ToolCall) and results[-1].arguments_json == "{}"
    bad = [spans.push(t) for t in [tok.tool_call_id, *tok.encode_text("[1]"), tok.tool_call_end_id]]
    assert bad[-1] == "[1]"
    spans.push(tok.tool_call_id)
    spans.push(tok.encode_text("{")[0])
    assert spans.in_call and spans.flush() == "{" and not spans.in_call


def test_tool_choice_none_offers_no_tools() -> None:
    request = ChatRequest("r", (Message(Role.USER, (TextPart("hi"),)),), tools=(LOOKUP,))
    assert offered_tools(request) == (LOOKUP,)
    none = ChatRequest("r", request.messages, tools=(LOOKUP,), tool_choice=ToolChoice(ToolChoiceKind.NONE))
    assert offered_tools(none) == ()


POOL = PoolConfig(
    name="p", engine=EngineConfig(context_length=4096, max_output_tokens=100, default_max_output_tokens=10)
)


def check(**fields) -> None:
    validate_request(ChatRequest("r", (Message(Role.USER, (TextPart("hi"),)),), **fields), POOL, RequestLimits())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": (ToolSpec("f", "", '{"type": "objekt"}'),)}, "tools[0].parameters_json_schema"),
        ({"tools": (ToolSpec("f", "", '{"type": "string"}'),)}, "tools[0].parameters_json_schema"),
        ({"tools": (ToolSpec("f", "", '{"required": "q"}'),)}, "tools[0].parameters_json_schema"),
        ({"tools": (LOOKUP, LOOKUP)}, "tools[1].name"),
        ({"tools": (LOOKUP,), "tool_choice": ToolChoice(ToolChoiceKind.NAMED, "nope")}, "tool_choice.name"),
        ({"response_format": ResponseFormat(ResponseFormatKind.JSON_SCHEMA, "")}, "response_format.json_schema"),
        (
            {"response_format": ResponseFormat(ResponseFormatKind.JSON_SCHEMA, '{"minimum": "x"}')},
            "response_format.json_schema",
        ),
        ({"response_format": ResponseFormat(ResponseFormatKind.TEXT, "{}")}, "response_format.json_schema"),
    ],
)
def test_invalid_schemas_and_choices_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check(**fields)
    assert info.value.field == field


def test_valid_tools_and_format_pass() -> None:
    fmt = ResponseFormat(ResponseFormatKind.JSON_SCHEMA, '{"type": "array", "items": {"type": "integer"}}')
    check(tools=(LOOKUP,), tool_choice=ToolChoice(ToolChoiceKind.NAMED, "lookup"), response_format=fmt)


def test_response_format_from_pb() -> None:
    msg = pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])])
    assert request_from_pb(msg, "r", Identity()).response_format == ResponseFormat()
    msg.response_format.kind = pb.ResponseFormat.KIND_JSON_SCHEMA
    msg.response_format.json_schema = '{"type": "object"}'
    msg.response_format.strict = False
    fmt = request_from_pb(msg, "r", Identity()).response_format
    assert fmt == ResponseFormat(ResponseFormatKind.JSON_SCHEMA, '{"type": "object"}', strict=False)


def test_gateway_emits_tool_call_events_after_text() -> None:
    call = ToolCall("call_1", "lookup", '{"q": "x"}')
    events = StreamEvents(prepared_request(), "p", "", usage_in_stream=False).of(
        GenerationChunk(text="ok", tool_calls=(call,))
    )
    assert [type(e).__name__ for e in events] == ["TextDelta", "ToolCallEvent"]
    assert events[1] == ToolCallEvent(call)


def test_json_answer_with_auto_tools_may_open_a_call_first(factory, tok: MuseTokenizer) -> None:
    fmt = ResponseFormat(ResponseFormatKind.JSON_OBJECT)
    request = prepared_request(
        tools=(LOOKUP,), tool_choice=ToolChoice(ToolChoiceKind.AUTO), response_format=fmt, max_output_tokens=64
    )
    logits = factory.build_now(request)((), [], torch.zeros(tok.vocab_size))
    allowed = {i for i in range(tok.vocab_size) if logits[i] > float("-inf")}
    assert tok.tool_call_id in allowed and tok.encode_text("{")[0] in allowed
    assert all(tok.decode([i]).startswith("{") for i in allowed - {tok.tool_call_id})
    # A budget too small for a call (with its control tokens) leaves only the JSON answer.
    tight = factory.build_now(
        prepared_request(
            tools=(LOOKUP,), tool_choice=ToolChoice(ToolChoiceKind.AUTO), response_format=fmt, max_output_tokens=12
        )
    )((), [], torch.zeros(tok.vocab_size))
    assert tight[tok.tool_call_id] == float("-inf") and tight[tok.encode_text("{")[0]] > float("-inf")
