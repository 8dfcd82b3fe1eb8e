"""How requests name a LoRA adapter at the API edges: `MODEL:ADAPTER` in every OpenAI endpoint
that takes a model (a mode suffix keeps its meaning), `ChatRequest.adapter` over gRPC, the
adapters ListModels reports, and error fields renamed to the field the client sent."""

from __future__ import annotations

from typing import Any

import pytest

from museserve.api.convert import model_info_to_pb, request_from_pb
from museserve.api.openai.completions_convert import completion_request_from_openai
from museserve.api.openai.completions_schemas import CompletionRequest
from museserve.api.openai.convert import request_from_openai
from museserve.api.openai.errors import openai_param
from museserve.api.openai.model_names import ModelName, answered_model, parse_model_name
from museserve.api.openai.responses_convert import request_from_responses
from museserve.api.openai.responses_http import responses_param
from museserve.api.openai.responses_output import request_echo
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.domain import ChatRequest, Identity, Mode, ModelInfo
from museserve.errors import InvalidArgument, MuseError, NotFound
from museserve.v1 import chat_pb2 as pb

MODELS = {"muse-tiny": ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT, Mode.THINKING))}
USER = {"role": "user", "content": "hi"}
IDENTITY = Identity("t", "u")


def chat(model: str, **fields: Any) -> ChatRequest:
    body = ChatCompletionRequest.model_validate({"model": model, "messages": [USER], **fields})
    return request_from_openai(body, "r1", IDENTITY, MODELS)


def completion(model: str) -> ChatRequest:
    body = CompletionRequest.model_validate({"model": model, "prompt": "Once upon"})
    return completion_request_from_openai(body, "r1", IDENTITY, MODELS)


def response(model: str, **fields: Any) -> ChatRequest:
    body = ResponseCreateRequest.model_validate({"model": model, "input": "hi", **fields})
    return request_from_responses(body, "r1", IDENTITY, MODELS)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("muse-tiny", ModelName("muse-tiny")),
        ("muse-tiny:support", ModelName("muse-tiny", adapter="support")),
        ("muse-tiny:thinking", ModelName("muse-tiny", mode=Mode.THINKING)),
        ("muse-tiny:contemplating", ModelName("muse-tiny", mode=Mode.CONTEMPLATING)),
        ("muse-tiny:a:b", ModelName("muse-tiny", adapter="a:b")),  # the first ':' splits; the gateway refuses it
        (":support", ModelName("", adapter="support")),
        ("", ModelName("")),
    ],
)
def test_the_first_colon_splits_the_model_from_a_mode_or_an_adapter(name: str, parsed: ModelName) -> None:
    assert parse_model_name(name) == parsed


def test_an_empty_suffix_is_refused_on_the_model_field() -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_model_name("muse-tiny:")
    assert refused.value.field == "model"


@pytest.mark.parametrize("convert", [chat, completion, response], ids=["chat", "completions", "responses"])
def test_every_endpoint_sends_the_adapter_apart_from_the_model(convert) -> None:
    request = convert("muse-tiny:support")
    assert (request.model, request.adapter, request.mode.mode) == ("muse-tiny", "support", Mode.INSTANT)
    bare = convert("muse-tiny")
    assert (bare.model, bare.adapter) == ("muse-tiny", "")


@pytest.mark.parametrize("convert", [chat, response], ids=["chat", "responses"])
def test_a_mode_suffix_keeps_its_meaning_and_an_adapter_combines_with_the_mode_field(convert) -> None:
    thinking = convert("muse-tiny:thinking")
    assert (thinking.model, thinking.adapter, thinking.mode.mode) == ("muse-tiny", "", Mode.THINKING)
    both = convert("muse-tiny:support", mode="thinking")
    assert (both.adapter, both.mode.mode) == ("support", Mode.THINKING)


@pytest.mark.parametrize("convert", [chat, completion, response], ids=["chat", "completions", "responses"])
def test_an_unknown_model_with_an_adapter_is_still_an_unknown_model(convert) -> None:
    with pytest.raises(NotFound) as refused:
        convert("gpt-4o:support")
    assert refused.value.field == "model" and "'gpt-4o'" in refused.value.message


def test_a_completion_takes_an_adapter_but_no_reasoning_mode() -> None:
    with pytest.raises(MuseError) as refused:
        completion("muse-tiny:thinking")
    assert refused.value.field == "model"
    assert completion("muse-tiny:instant").adapter == ""


def test_an_adapter_with_no_model_leaves_the_pool_to_the_routes() -> None:
    request = chat(":support")
    assert (request.model, request.adapter) == ("", "support")


def test_the_gateways_adapter_errors_name_the_model_field() -> None:
    assert openai_param("adapter") == "model"
    assert responses_param("adapter") == "model"


def test_a_response_names_the_model_as_asked_when_it_carries_an_adapter() -> None:
    assert answered_model(chat("muse-tiny:support"), "muse-tiny:support", "muse-tiny") == "muse-tiny:support"
    assert answered_model(chat("muse-tiny:thinking"), "muse-tiny:thinking", "muse-tiny") == "muse-tiny"
    assert answered_model(chat("muse-tiny"), "muse-tiny", "muse-next") == "muse-next"  # the A/B side, as before


def test_the_responses_echo_keeps_a_model_with_an_adapter_as_sent() -> None:
    def echo(model: str) -> dict[str, Any]:
        return request_echo(ResponseCreateRequest.model_validate({"model": model, "input": "hi"}), 0.0)

    assert echo("muse-tiny:support")["model"] == "muse-tiny:support"
    assert "model" not in echo("muse-tiny") and "model" not in echo("muse-tiny:thinking")


def test_grpc_adapter_converts_to_the_domain_request() -> None:
    msg = pb.ChatRequest(
        model="muse-tiny",
        adapter="support",
        messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="x")])],
    )
    request = request_from_pb(msg, "r1", IDENTITY)
    assert (request.model, request.adapter) == ("muse-tiny", "support")
    assert request_from_pb(pb.ChatRequest(model="muse-tiny"), "r1", IDENTITY).adapter == ""


def test_grpc_model_info_lists_the_callers_adapters() -> None:
    info = ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT,), ("acme", "support"))
    msg = model_info_to_pb(info, True)
    assert list(msg.adapters) == ["acme", "support"] and msg.name == "muse-tiny"
    assert list(model_info_to_pb(MODELS["muse-tiny"], False).adapters) == []
