"""Tool calls over gRPC on the session app: the tiny dummy model (random weights), constrained by
the tools' grammars, returns structured calls whose arguments validate, unary and streaming."""

from __future__ import annotations

import json

import grpc
import jsonschema
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from museserve.client import ChatClient, build_request
from museserve.v1 import chat_pb2 as pb

pytestmark = pytest.mark.integration

# Bounded numbers and strings: random weights would otherwise write digits until the limit.
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
}
ORDER = {
    "type": "object",
    "properties": {"sku": {"enum": ["a1", "b2"]}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["sku", "qty"],
}
SCHEMAS = {"get_weather": WEATHER, "place_order": ORDER}


def tool_request(seed: int, kind: int = pb.ToolChoice.KIND_REQUIRED, name: str = "") -> pb.ChatRequest:
    request = build_request("What's the weather in Paris?", temperature=1.0, seed=seed, max_output_tokens=300)
    for tool_name, schema in SCHEMAS.items():
        request.tools.add(
            name=tool_name, description=f"the {tool_name} tool", parameters_json_schema=json.dumps(schema)
        )
    request.tool_choice.kind = kind
    request.tool_choice.name = name
    return request


def assert_valid(calls) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_")
        jsonschema.validate(json.loads(call.arguments_json), SCHEMAS[call.name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unary_required_returns_structured_calls(client: ChatClient, seed: int):
    response = client.chat(tool_request(seed), timeout=60)
    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert response.text == ""
    assert_valid(response.tool_calls)


def test_stream_required_emits_tool_call_events(client: ChatClient):
    events = list(client.stream(tool_request(3), timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-2:] == ["usage", "finish"], kinds
    assert set(kinds[:-2]) == {"tool_call"}, kinds
    assert events[-1].finish.reason == pb.FINISH_REASON_TOOL_CALLS
    assert_valid([e.tool_call for e in events[:-2]])


def test_named_tool_and_json_answer(client: ChatClient):
    named = client.chat(tool_request(4, pb.ToolChoice.KIND_NAMED, "place_order"), timeout=60)
    assert [c.name for c in named.tool_calls] == ["place_order"]
    assert_valid(named.tool_calls)
    request = build_request("Answer in JSON.", temperature=1.0, seed=5, max_output_tokens=300)
    request.response_format.kind = pb.ResponseFormat.KIND_JSON_SCHEMA
    request.response_format.json_schema = json.dumps(ORDER)
    answer = client.chat(request, timeout=60)
    assert answer.finish_reason == pb.FINISH_REASON_STOP
    jsonschema.validate(json.loads(answer.text), ORDER)


def bad_request_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry rich details"
    bad = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad) for detail in status.details), "no BadRequest detail"
    return bad.field_violations[0].field


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "objekt"},  # not a JSON Schema: refused by the gateway
        {"properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}},  # valid, but the grammar compiler refuses it
    ],
)
def test_bad_tool_schema_is_refused_naming_the_field(client: ChatClient, schema: dict):
    request = tool_request(0)
    request.tools[1].parameters_json_schema = json.dumps(schema)
    with pytest.raises(grpc.RpcError) as info:
        client.chat(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(info.value) == "tools[1].parameters_json_schema"
