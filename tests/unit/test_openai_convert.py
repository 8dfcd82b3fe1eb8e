"""OpenAI request bodies -> domain requests, and every refusal with the field OpenAI names."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessage
from pydantic import ValidationError

from museserve.api.openai.convert import REASONING_BUDGETS, request_from_openai
from museserve.api.openai.errors import error_response, openai_param, validation_message
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.domain import (
    AudioPart,
    Identity,
    ImagePart,
    Mode,
    ModelInfo,
    ResponseFormatKind,
    Role,
    TextPart,
    ToolCall,
    ToolChoiceKind,
)
from museserve.errors import ErrorCode, InvalidArgument, MuseError, ResourceExhausted

MODELS = {"muse-tiny": ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT, Mode.THINKING, Mode.CONTEMPLATING))}
USER = {"role": "user", "content": "hi"}


def convert(**fields: Any):
    body = ChatCompletionRequest.model_validate({"model": "muse-tiny", "messages": [USER], **fields})
    return request_from_openai(body, "req-1", Identity("t", "u"), MODELS)


def refusal(**fields: Any) -> MuseError:
    with pytest.raises(MuseError) as caught:
        convert(**fields)
    return caught.value


def invalid_param(body: dict[str, Any]) -> str | None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate({"model": "muse-tiny", "messages": [USER], **body})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    return validation_message(errors)[1]


def test_messages_of_every_role_and_part():
    png, wav = b"\x89PNG-bytes", b"RIFF-bytes"
    messages = [
        {"role": "developer", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{base64.b64encode(png).decode()}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
    ]
    request = convert(messages=messages)
    system, user, assistant, tool = request.messages
    assert (system.role, system.parts) == (Role.SYSTEM, (TextPart("be brief"),))
    assert user.parts == (
        TextPart("what is this?"),
        ImagePart(data=png, mime_type="image/png"),
        ImagePart(url="https://example.com/a.jpg"),
        AudioPart(data=wav, format="wav"),
    )
    assert assistant.tool_calls == (ToolCall("c1", "f", "{}"),) and assistant.parts == ()
    assert (tool.role, tool.tool_call_id, tool.text) == (Role.TOOL, "c1", "42")
    assert (request.request_id, request.identity, request.model) == ("req-1", Identity("t", "u"), "muse-tiny")


def test_an_echoed_assistant_message_from_the_client_is_accepted():
    echoed = ChatCompletionMessage(role="assistant", content="hello", reasoning_content="hmm").model_dump()
    request = convert(messages=[USER, echoed, USER])
    assert request.messages[1].text == "hello"


def test_sampling_fields():
    s = convert(
        temperature=0, top_p=0.5, seed=7, stop="END", max_tokens=5, presence_penalty=1, logprobs=True, top_logprobs=3
    ).sampling
    assert (s.temperature, s.top_p, s.seed, s.stop, s.max_output_tokens) == (0, 0.5, 7, ("END",), 5)
    assert (s.presence_penalty, s.logprobs, s.top_logprobs) == (1, True, 3)
    assert convert(stop=["a", "b"], max_tokens=5, max_completion_tokens=9).sampling.stop == ("a", "b")
    assert convert(max_tokens=5, max_completion_tokens=9).sampling.max_output_tokens == 9
    assert convert(top_k=4, repetition_penalty=1.2).sampling.top_k == 4


def test_answers_and_vllm_sampling_extensions():
    s = convert(n=3, min_tokens=4, ignore_eos=True, skip_special_tokens=False).sampling
    assert (s.n, s.min_tokens, s.ignore_eos, s.skip_special_tokens) == (3, 4, True, False)
    default = convert().sampling
    assert (default.n, default.min_tokens, default.ignore_eos, default.skip_special_tokens) == (1, 0, False, True)
    assert default.prompt_logprobs is None and convert().prompt is None
    assert default.speculative and convert(speculative="auto").sampling.speculative
    assert not convert(speculative="off").sampling.speculative


def test_continuous_usage_stats_ask_for_usage_in_the_stream():
    options = {"include_usage": True, "continuous_usage_stats": True}
    assert convert(stream=True, stream_options=options).usage_in_stream
    assert not convert(stream=True, stream_options={"include_usage": True}).usage_in_stream
    assert not convert(stream_options=options).usage_in_stream  # nothing streams


def test_tools_tool_choice_and_response_format():
    tools = [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]
    assert convert().tool_choice.kind is ToolChoiceKind.NONE
    assert convert(tools=tools).tool_choice.kind is ToolChoiceKind.AUTO
    assert convert(tools=tools, tool_choice="required").tool_choice.kind is ToolChoiceKind.REQUIRED
    named = convert(tools=tools, tool_choice={"type": "function", "function": {"name": "get"}}).tool_choice
    assert (named.kind, named.name) == (ToolChoiceKind.NAMED, "get")
    assert json.loads(convert(tools=tools).tools[0].parameters_json_schema) == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    f = convert(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}).response_format
    assert (f.kind, json.loads(f.json_schema), f.strict) == (ResponseFormatKind.JSON_SCHEMA, schema, False)
    assert convert(response_format={"type": "json_object"}).response_format.kind is ResponseFormatKind.JSON_OBJECT
    assert convert(response_format={"type": "text"}).response_format.kind is ResponseFormatKind.TEXT


@pytest.mark.parametrize(
    ("fields", "mode", "budget", "agents"),
    [
        ({}, Mode.INSTANT, None, None),
        ({"model": "muse-tiny:thinking"}, Mode.THINKING, None, None),
        ({"mode": "thinking", "thinking_budget": 64}, Mode.THINKING, 64, None),
        ({"mode": "contemplating", "num_agents": 4}, Mode.CONTEMPLATING, None, 4),
        ({"reasoning_effort": "low"}, Mode.THINKING, REASONING_BUDGETS["low"], None),
        ({"reasoning_effort": "high"}, Mode.THINKING, 1024, None),  # capped at the model's output limit
        ({"reasoning_effort": "none"}, Mode.INSTANT, None, None),
        ({"reasoning_effort": "low", "thinking_budget": 9}, Mode.THINKING, 9, None),
    ],
)
def test_mode_from_suffix_extra_fields_or_reasoning_effort(fields, mode, budget, agents):
    m = convert(**fields).mode
    assert (m.mode, m.thinking_budget, m.num_agents) == (mode, budget, agents)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"model": "gpt-4o"}, "model", ErrorCode.NOT_FOUND),
        ({"model": "gpt-4o:support"}, "model", ErrorCode.NOT_FOUND),
        ({"model": "muse-tiny:thinking", "mode": "instant"}, "mode", ErrorCode.INVALID_ARGUMENT),
        ({"mode": "instant", "reasoning_effort": "low"}, "reasoning_effort", ErrorCode.INVALID_ARGUMENT),
        ({"mode": "thinking", "reasoning_effort": "none"}, "reasoning_effort", ErrorCode.INVALID_ARGUMENT),
        ({"logit_bias": {"1": 5}}, "logit_bias", ErrorCode.INVALID_ARGUMENT),
        ({"functions": [{"name": "f"}]}, "functions", ErrorCode.INVALID_ARGUMENT),
        ({"modalities": ["text", "audio"]}, "modalities", ErrorCode.INVALID_ARGUMENT),
        ({"model": "muse-tiny:"}, "model", ErrorCode.INVALID_ARGUMENT),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"\ud800": 1}}}},
            "response_format.json_schema.schema",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]},
            "messages[0].content[0].image_url.url",
            ErrorCode.INVALID_ARGUMENT,
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "*", "format": "wav"}}],
                    }
                ]
            },  # noqa: E501
            "messages[0].content[0].input_audio.data",
            ErrorCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_refusals_name_the_openai_field(fields, param, code):
    error = refusal(**fields)
    assert (error.field, error.code) == (param, code)


def test_harmless_fields_of_the_official_client_are_ignored():
    request = convert(store=False, metadata={"k": "v"}, service_tier="auto", user="u", n=1, parallel_tool_calls=True)
    assert request.messages[0].text == "hi"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 7}, "temperature"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"best_of": 2}, "best_of"),
        ({"stream_options": {"continuous_usage_stats": "often"}}, "stream_options.continuous_usage_stats"),
        ({"seed": 2**64}, "seed"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"top_p": float("nan")}, "top_p"),
        ({"messages": [{"role": "user", "content": "lone \ud800 surrogate"}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "messages[0].content[0].text",
        ),
        ({"stop": ["ok", "\ud800"]}, "stop"),
    ],
)
def test_schema_errors_name_the_field_path(body, param):
    assert invalid_param(body) == param


def test_invalid_json_has_no_param():
    message, param = validation_message([{"type": "json_invalid", "loc": ("body", 3), "msg": "bad", "ctx": {}}])
    assert param is None and "not valid JSON" in message


@pytest.mark.parametrize(
    ("field", "param"),
    [
        ("sampling.temperature", "temperature"),
        ("sampling.stop[1]", "stop[1]"),
        ("sampling.max_output_tokens", "max_completion_tokens"),
        ("mode.mode", "mode"),
        ("mode.thinking_budget", "thinking_budget"),
        ("tool_choice.name", "tool_choice"),
        ("tools[2].parameters_json_schema", "tools[2].function.parameters"),
        ("tools[2].name", "tools[2].function.name"),
        ("messages[1].tool_calls[0].arguments", "messages[1].tool_calls[0].function.arguments"),
        ("messages[0].content[1].image", "messages[0].content[1].image_url.url"),
        ("messages[0].content[1].image.data", "messages[0].content[1].image_url.url"),
        ("messages[0].content[2].audio.data", "messages[0].content[2].input_audio.data"),
        ("response_format.json_schema", "response_format.json_schema.schema"),
        ("metadata.authorization", None),
        ("messages[0].content[1].image_url.url", "messages[0].content[1].image_url.url"),
        ("temperature", "temperature"),
        ("sampling.n", "n"),
        ("sampling.min_tokens", "min_tokens"),
        ("sampling.prompt_logprobs", "logprobs"),
        ("prompt", "prompt"),
        ("prompt[3]", "prompt[3]"),
    ],
)
def test_domain_fields_become_openai_params(field, param):
    assert openai_param(field) == param


def test_error_response_status_headers_and_shape():
    limited = ResourceExhausted(
        "tenant t: 1 request per minute", retry_after_s=2.5, metadata=(("x-ratelimit-remaining-requests", "0"),)
    )
    response = error_response(limited, "rid")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3" and response.headers["retry-after-ms"] == "2500"
    assert response.headers["x-ratelimit-remaining-requests"] == "0" and response.headers["x-request-id"] == "rid"
    body = json.loads(response.body)["error"]
    assert (body["type"], body["param"], body["code"]) == ("rate_limit_error", None, "resource_exhausted")
    bad = error_response(InvalidArgument("too big", field="sampling.max_output_tokens"), "r", "max_tokens")
    assert bad.status_code == 400 and json.loads(bad.body)["error"]["param"] == "max_tokens"
    assert error_response(MuseError("boom"), "r").status_code == 500


def test_an_empty_model_leaves_the_pool_to_the_gateways_mode_routes():
    thinking = convert(model="", reasoning_effort="low")
    assert thinking.model == "" and thinking.mode.mode is Mode.THINKING
    assert thinking.mode.thinking_budget == REASONING_BUDGETS["low"]  # capped by the default model's window
    assert convert(model="muse-tiny").model == "muse-tiny"
