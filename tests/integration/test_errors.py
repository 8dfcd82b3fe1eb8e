"""Every bad request is refused before work starts, with the right status and the field."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from museserve.client import ChatClient, build_request
from museserve.v1 import chat_pb2 as pb

from .conftest import CONTEXT_LENGTH, MAX_IMAGE_BYTES, MAX_REQUEST_BYTES

pytestmark = pytest.mark.integration


def _no_messages() -> pb.ChatRequest:
    return pb.ChatRequest()


def _empty_content() -> pb.ChatRequest:
    return pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="  ")])])


def _no_role() -> pb.ChatRequest:
    return pb.ChatRequest(messages=[pb.Message(content=[pb.ContentPart(text="hi")])])


def _unknown_mode() -> pb.ChatRequest:
    request = build_request("hi")
    request.mode.mode = 99  # an enum value this server does not know
    return request


def _unknown_model() -> pb.ChatRequest:
    return build_request("hi", model="muse-unknown")


def _max_output_zero() -> pb.ChatRequest:
    return build_request("hi", max_output_tokens=0)


def _max_output_too_large() -> pb.ChatRequest:
    return build_request("hi", max_output_tokens=1_000_000)


def _prompt_over_context() -> pb.ChatRequest:
    return build_request("word " * (CONTEXT_LENGTH + 100))


def _prompt_plus_output_over_context() -> pb.ChatRequest:
    return build_request("word " * (CONTEXT_LENGTH - 600), max_output_tokens=1000)


def _temperature() -> pb.ChatRequest:
    return build_request("hi", temperature=5.0)


def _top_p() -> pb.ChatRequest:
    request = build_request("hi")
    request.sampling.top_p = 0.0
    return request


def _disabled_mode() -> pb.ChatRequest:
    return build_request("hi", mode="contemplating", model="muse-cand")  # a pool without that mode


def _budget_on_instant() -> pb.ChatRequest:
    return build_request("hi", mode="instant", thinking_budget=5)


def _too_many_stops() -> pb.ChatRequest:
    return build_request("hi", stop=[str(i) for i in range(20)])


def _empty_stop() -> pb.ChatRequest:
    return build_request("hi", stop=[""])


def _unset_part() -> pb.ChatRequest:
    return pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart()])])


def _tool_without_call_id() -> pb.ChatRequest:
    return pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_TOOL, content=[pb.ContentPart(text="42")])])


def _bad_tool_schema() -> pb.ChatRequest:
    request = build_request("hi")
    request.tools.append(pb.Tool(name="lookup", parameters_json_schema="{not json"))
    return request


def _named_tool_missing() -> pb.ChatRequest:
    request = build_request("hi")
    request.tools.append(pb.Tool(name="lookup", parameters_json_schema="{}"))
    request.tool_choice.kind = pb.ToolChoice.KIND_NAMED
    request.tool_choice.name = "other"
    return request


def _image_too_large() -> pb.ChatRequest:
    request = build_request("look")
    request.messages[0].content.append(pb.ContentPart(image=pb.Image(data=b"\x89PNG" + b"0" * (MAX_IMAGE_BYTES + 1))))
    return request


INVALID: list[tuple[Callable[[], pb.ChatRequest], str]] = [
    (_no_messages, "messages"),
    (_empty_content, "messages[0].content"),
    (_no_role, "messages[0].role"),
    (_unknown_mode, "mode.mode"),
    (_unknown_model, "model"),
    (_max_output_zero, "sampling.max_output_tokens"),
    (_max_output_too_large, "sampling.max_output_tokens"),
    (_prompt_over_context, "messages"),
    (_prompt_plus_output_over_context, "sampling.max_output_tokens"),
    (_temperature, "sampling.temperature"),
    (_top_p, "sampling.top_p"),
    (_budget_on_instant, "mode.thinking_budget"),
    (_too_many_stops, "sampling.stop"),
    (_empty_stop, "sampling.stop[0]"),
    (_unset_part, "messages[0].content[0]"),
    (_tool_without_call_id, "messages[0].tool_call_id"),
    (_bad_tool_schema, "tools[0].parameters_json_schema"),
    (_named_tool_missing, "tool_choice.name"),
    (_image_too_large, "messages[0].content[1].image.data"),
]


def _bad_request_field(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry rich details"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest detail")


@pytest.mark.parametrize(("make", "field"), INVALID, ids=[m.__name__.strip("_") for m, _ in INVALID])
def test_unary_invalid_argument_names_the_field(client: ChatClient, make, field: str):
    with pytest.raises(grpc.RpcError) as caught:
        client.chat(make(), timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: ")
    assert "Traceback" not in error.details()
    assert _bad_request_field(error) == field


@pytest.mark.parametrize(("make", "field"), INVALID, ids=[m.__name__.strip("_") for m, _ in INVALID])
def test_stream_invalid_argument_names_the_field(client: ChatClient, make, field: str):
    with pytest.raises(grpc.RpcError) as caught:
        list(client.stream(make(), timeout=30))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith(f"{field}: ")
    assert "Traceback" not in error.details()


def test_a_mode_the_pool_does_not_serve_is_a_failed_precondition(client: ChatClient):
    for call in (lambda r: client.chat(r, timeout=30), lambda r: list(client.stream(r, timeout=30))):
        with pytest.raises(grpc.RpcError) as caught:
            call(_disabled_mode())
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
        assert caught.value.details().startswith("mode.mode: model muse-cand does not serve mode contemplating")


def test_count_tokens_refuses_an_unknown_model(client: ChatClient):
    with pytest.raises(grpc.RpcError) as caught:
        client.count_tokens(_unknown_model(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("model: ")


def test_count_tokens_counts_a_prompt_over_the_context(client: ChatClient):
    count = client.count_tokens(_prompt_over_context(), timeout=30)
    assert count.prompt_tokens > count.context_length == CONTEXT_LENGTH


def test_a_corrupt_image_is_invalid_and_names_the_part(client: ChatClient):
    request = build_request("look")  # a PNG signature and nothing after it
    request.messages[0].content.append(pb.ContentPart(image=pb.Image(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")))
    with pytest.raises(grpc.RpcError) as caught:
        client.chat(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("messages[0].content[1].image: ")


def test_a_message_over_the_size_limit_is_refused_at_the_edge(client: ChatClient):
    request = build_request("x" * (MAX_REQUEST_BYTES + 1))
    with pytest.raises(grpc.RpcError) as caught:
        client.chat(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
