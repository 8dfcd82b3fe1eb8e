"""Answers and stream events -> the Responses API's JSON, checked against the official client's
types: the response object, each SSE event, and the client's own stream accumulator, whose
final response must equal the non-streamed one. Also the error params of gateway fields."""

from __future__ import annotations

import json
from typing import Any

import openai.types.responses as oai
import pytest
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState

from museserve.api.openai import responses_models
from museserve.api.openai.responses_http import responses_param
from museserve.api.openai.responses_output import answer_json, default_echo, output_items, request_echo
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.api.openai.responses_stream import ResponseEventStream
from museserve.domain import (
    AgentProgress,
    ChatResult,
    Finish,
    FinishReason,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from museserve.errors import Internal, ResourceExhausted
from museserve.gateway.events import ResultFold

RID = "resp_" + "0123456789abcdef" * 2
USAGE = Usage(prompt_tokens=10, cached_tokens=4, reasoning_tokens=3, output_tokens=5)
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
BODY = ResponseCreateRequest.model_validate(
    {
        "model": "muse-tiny",
        "input": "hi",
        "instructions": "be brief",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        "tool_choice": "auto",
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low", "summary": "auto"},
        "max_output_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "metadata": {"k": "v"},
        "user": "someone",
    }
)
ECHO = request_echo(BODY, 1_700_000_000.5)
EVENTS: list[StreamEvent] = [
    ReasoningDelta("let me "),
    AgentProgress(0, 1, False),
    ReasoningDelta("see"),
    TextDelta("hel"),
    TextDelta("lo"),
    ToolCallEvent(CALL),
    ToolCallEvent(ToolCall("call_2", "get_weather", '{"city": "Oslo"}')),
    USAGE,
    Finish(FinishReason.TOOL_CALLS, "muse-tiny"),
]
EVENT_TYPES: dict[str, type] = {
    "response.created": oai.ResponseCreatedEvent,
    "response.in_progress": oai.ResponseInProgressEvent,
    "response.output_item.added": oai.ResponseOutputItemAddedEvent,
    "response.output_item.done": oai.ResponseOutputItemDoneEvent,
    "response.content_part.added": oai.ResponseContentPartAddedEvent,
    "response.content_part.done": oai.ResponseContentPartDoneEvent,
    "response.output_text.delta": oai.ResponseTextDeltaEvent,
    "response.output_text.done": oai.ResponseTextDoneEvent,
    "response.reasoning_text.delta": oai.ResponseReasoningTextDeltaEvent,
    "response.reasoning_text.done": oai.ResponseReasoningTextDoneEvent,
    "response.function_call_arguments.delta": oai.ResponseFunctionCallArgumentsDeltaEvent,
    "response.function_call_arguments.done": oai.ResponseFunctionCallArgumentsDoneEvent,
    "response.completed": oai.ResponseCompletedEvent,
    "response.incomplete": oai.ResponseIncompleteEvent,
    "response.failed": oai.ResponseFailedEvent,
}


def fold(events: list[StreamEvent]) -> ChatResult:
    f = ResultFold()
    for event in events:
        f.add(event)
    return f.result()


def parse_sse(lines: list[str]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        head, data = line.split("\n", 1)
        assert head.startswith("event: ") and data.startswith("data: ") and data.endswith("\n\n")
        event = json.loads(data[len("data: ") :])
        assert event["type"] == head[len("event: ") :]
        EVENT_TYPES[event["type"]].model_validate(event)
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def stream_lines(events: list[StreamEvent]) -> list[str]:
    out = ResponseEventStream(RID, "muse-tiny", ECHO)
    return out.start() + [line for e in events for line in out.event(e)]


def accumulated(events: list[dict[str, Any]]) -> oai.Response:
    """The official client's stream helper over these events: its final response."""
    state: ResponseStreamState = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=oai.ResponseStreamEvent, value=event))  # type: ignore[arg-type]
    assert state._completed_response is not None, "no response.completed"
    return state._completed_response


def test_a_whole_answer_matches_the_official_types():
    data = answer_json(RID, fold(EVENTS), ECHO)
    parsed = oai.Response.model_validate(data)
    responses_models.ResponseObject.model_validate(data)
    assert parsed.id == RID and parsed.status == "completed" and parsed.created_at == 1_700_000_000
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call", "function_call"]
    assert parsed.output[0].content[0].text == "let me see" and parsed.output_text == "hello"
    assert (parsed.output[2].call_id, parsed.output[2].name, parsed.output[2].arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
    )
    u = parsed.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (10, 8, 18)
    assert (u.input_tokens_details.cached_tokens, u.output_tokens_details.reasoning_tokens) == (4, 3)
    assert parsed.instructions == "be brief" and parsed.metadata == {"k": "v"} and parsed.store is True
    assert parsed.tools[0].name == "get_weather" and parsed.tool_choice == "auto"
    assert parsed.text.format.type == "json_schema" and parsed.text.format.name == "w"
    assert parsed.reasoning.effort == "low" and parsed.max_output_tokens == 50
    assert (parsed.temperature, parsed.top_p, parsed.user) == (0.5, 0.9, "someone")
    assert parsed.error is None and parsed.incomplete_details is None and parsed.parallel_tool_calls is True


def test_a_cut_answer_is_incomplete_and_an_empty_one_has_an_empty_message():
    cut = answer_json(RID, fold([TextDelta("abc"), USAGE, Finish(FinishReason.LENGTH, "m")]), ECHO)
    parsed = oai.Response.model_validate(cut)
    assert parsed.status == "incomplete" and parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete"
    empty = oai.Response.model_validate(answer_json(RID, fold([USAGE, Finish(FinishReason.STOP, "m")]), ECHO))
    assert [item.type for item in empty.output] == ["message"] and empty.output_text == ""


def test_the_stream_events_match_the_official_types_and_end_with_the_whole_response():
    events = parse_sse(stream_lines(EVENTS))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == 4 == kinds.count("response.output_item.done")
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["hel", "lo"]
    assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == ["let me ", "see"]
    final = events[-1]["response"]
    assert final == answer_json(RID, fold(EVENTS), ECHO)  # what a retrieve shows, ids included
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


def test_the_official_stream_helper_assembles_the_same_response():
    response = accumulated(parse_sse(stream_lines(EVENTS)))
    assert response.id == RID and response.output_text == "hello"
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call", "function_call"]


def test_a_cut_stream_ends_incomplete():
    events = parse_sse(stream_lines([ReasoningDelta("r"), TextDelta("abc"), USAGE, Finish(FinishReason.LENGTH, "m")]))
    assert events[-1]["type"] == "response.incomplete"
    response = events[-1]["response"]
    assert response["status"] == "incomplete" and response["output"][-1]["status"] == "incomplete"
    assert response["output"] == output_items(RID, fold([ReasoningDelta("r"), TextDelta("abc"), USAGE,
                                                         Finish(FinishReason.LENGTH, "m")]))  # fmt: skip


@pytest.mark.parametrize(
    ("error", "code"), [(Internal("boom"), "server_error"), (ResourceExhausted("x"), "rate_limit_exceeded")]
)
def test_an_error_after_the_start_is_response_failed_with_the_output_so_far(error, code: str):
    out = ResponseEventStream(RID, "muse-tiny", ECHO)
    lines = out.start() + out.event(TextDelta("par")) + out.failed(error)
    events = parse_sse(lines)
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["code"] == code
    assert failed["response"]["output"][0]["content"][0]["text"] == "par"
    assert failed["response"]["output"][0]["status"] == "incomplete"


def test_a_response_stored_without_an_echo_shows_the_defaults():
    data = answer_json(RID, fold([TextDelta("x"), USAGE, Finish(FinishReason.STOP, "m")]),
                       default_echo(5.0, "sys", ""))  # fmt: skip
    parsed = oai.Response.model_validate(data)
    assert parsed.instructions == "sys" and parsed.tools == [] and parsed.previous_response_id is None


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("sampling.max_output_tokens", "max_output_tokens"),
        ("sampling.temperature", "temperature"),
        ("mode.thinking_budget", "thinking_budget"),
        ("mode.mode", "mode"),
        ("tool_choice.name", "tool_choice"),
        ("tools[2].parameters_json_schema", "tools[2].parameters"),
        ("tools[0].name", "tools[0].name"),
        ("response_format.json_schema", "text.format.schema"),
        ("messages[3].content[0].image", "input"),
        ("metadata.x-user-id", "user"),
        ("metadata.authorization", None),
        ("previous_response_id", "previous_response_id"),
        ("store", "store"),
        ("input[1].content[0].image_url", "input[1].content[0].image_url"),
    ],
)
def test_gateway_fields_are_named_as_the_responses_api_does(field: str, param: str | None):
    assert responses_param(field) == param
