"""`POST /v1/responses` bodies -> the domain ChatRequest chat makes: input items, tools and
function call outputs, text formats, reasoning effort, conversation fields, and refusals that
name the field as the Responses API spells it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import ValidationError

from museserve.api.openai.convert import REASONING_BUDGETS
from museserve.api.openai.errors import validation_message
from museserve.api.openai.responses_convert import request_from_responses
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.domain import (
    AudioPart,
    ChatRequest,
    Identity,
    ImagePart,
    Mode,
    ModelInfo,
    ResponseFormatKind,
    Role,
    ToolCall,
    ToolChoiceKind,
)
from museserve.errors import InvalidArgument, MuseError, NotFound

MODELS = {
    "muse-tiny": ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT, Mode.THINKING)),
    "other": ModelInfo("other", 2048, 100, (Mode.INSTANT, Mode.THINKING)),
}
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def convert(**fields: Any) -> ChatRequest:
    body = ResponseCreateRequest.model_validate({"input": "hi", **fields})
    return request_from_responses(body, "rid", Identity("t", "u"), MODELS)


def refused(**fields: Any) -> MuseError:
    with pytest.raises(MuseError) as caught:
        convert(**fields)
    return caught.value


def invalid_body(**fields: Any) -> str | None:
    with pytest.raises(ValidationError) as caught:
        ResponseCreateRequest.model_validate({"input": "hi", **fields})
    return validation_message(caught.value.errors())[1]


def test_a_string_input_is_one_user_message_and_defaults_follow_openai():
    chat = convert()
    assert [(m.role, m.text) for m in chat.messages] == [(Role.USER, "hi")]
    assert chat.model == "" and chat.mode.mode is Mode.INSTANT  # empty model: the gateway routes by mode
    assert chat.store is True and chat.previous_response_id == "" and chat.instructions == ""
    assert chat.tool_choice.kind is ToolChoiceKind.NONE and chat.response_format.kind is ResponseFormatKind.TEXT
    assert convert(store=False).store is False


def test_items_map_to_messages_and_a_function_call_joins_its_assistant_turn():
    items = [
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}", "detail": "auto"},
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF").decode(), "format": "wav"}},
        ]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "checking", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
    ]  # fmt: skip
    chat = convert(input=items, instructions="turn only")
    roles = [m.role for m in chat.messages]
    assert roles == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL]
    user = chat.messages[1]
    assert user.text == "look" and user.parts[1] == ImagePart(data=b"\x89PNG\r\n\x1a\n", mime_type="image/png")
    assert user.parts[2] == ImagePart(url="https://example.com/a.png") and user.parts[3] == AudioPart(b"RIFF", "wav")
    assistant = chat.messages[2]
    assert assistant.text == "checking" and assistant.tool_calls == (
        ToolCall("call_1", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_2", "get_weather", '{"city": "Oslo"}'),
    )
    assert [(m.tool_call_id, m.text) for m in chat.messages[3:]] == [("call_1", "sunny"), ("call_2", "rain")]
    assert chat.instructions == "turn only"  # applied by the gateway, for this turn only


def test_a_function_call_output_alone_continues_a_stored_turn():
    chat = convert(
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "42"}],
        previous_response_id="resp_" + "a" * 32,
    )
    assert chat.previous_response_id == "resp_" + "a" * 32
    assert [(m.role, m.tool_call_id) for m in chat.messages] == [(Role.TOOL, "call_1")]


def test_tools_choices_and_formats():
    tools = [{"type": "function", "name": "get_weather", "description": "d", "parameters": WEATHER, "strict": True},
             {"type": "function", "name": "noop"}]  # fmt: skip
    chat = convert(tools=tools)
    assert chat.tools[0].name == "get_weather" and json.loads(chat.tools[0].parameters_json_schema) == WEATHER
    assert json.loads(chat.tools[1].parameters_json_schema) == {"type": "object", "properties": {}}
    assert chat.tool_choice.kind is ToolChoiceKind.AUTO
    assert convert(tools=tools, tool_choice="required").tool_choice.kind is ToolChoiceKind.REQUIRED
    named = convert(tools=tools, tool_choice={"type": "function", "name": "noop"}).tool_choice
    assert (named.kind, named.name) == (ToolChoiceKind.NAMED, "noop")
    schema = convert(text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}})
    f = schema.response_format
    assert f.kind is ResponseFormatKind.JSON_SCHEMA and json.loads(f.json_schema) == WEATHER and f.strict
    assert not convert(text={"format": {"type": "json_schema", "name": "w", "schema": WEATHER}}).response_format.strict
    assert convert(text={"format": {"type": "json_object"}}).response_format.kind is ResponseFormatKind.JSON_OBJECT
    assert (
        convert(text={"format": {"type": "text"}, "verbosity": "low"}).response_format.kind is ResponseFormatKind.TEXT
    )


def test_sampling_fields():
    chat = convert(max_output_tokens=7, temperature=0.5, top_p=0.9)
    assert (chat.sampling.max_output_tokens, chat.sampling.temperature, chat.sampling.top_p) == (7, 0.5, 0.9)


@pytest.mark.parametrize(
    ("fields", "mode", "budget"),
    [
        ({"reasoning": {"effort": "low"}}, Mode.THINKING, REASONING_BUDGETS["low"]),
        ({"reasoning": {"effort": "minimal", "summary": "auto"}}, Mode.THINKING, REASONING_BUDGETS["minimal"]),
        ({"model": "other", "reasoning": {"effort": "high"}}, Mode.THINKING, 100),  # capped at the model's limit
        ({"reasoning": {"effort": "max"}}, Mode.THINKING, 1024),
        ({"reasoning": {"effort": "none"}}, Mode.INSTANT, None),
        ({"model": "muse-tiny:thinking"}, Mode.THINKING, None),
        ({"mode": "thinking", "thinking_budget": 9, "reasoning": {"effort": "low"}}, Mode.THINKING, 9),
    ],
)
def test_reasoning_effort_sets_mode_and_budget(fields: dict, mode: Mode, budget: int | None):
    chat = convert(**fields)
    assert (chat.mode.mode, chat.mode.thinking_budget) == (mode, budget)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "muse-tiny:instant", "reasoning": {"effort": "low"}}, "reasoning.effort"),
        ({"model": "muse-tiny:thinking", "reasoning": {"effort": "none"}}, "reasoning.effort"),
        ({"model": "muse-tiny:"}, "model"),
        ({"model": "muse-tiny:thinking", "mode": "instant"}, "mode"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"truncation": "auto"}, "truncation"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
         "input[0].content[0].file_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png,xx"}]}]},
         "input[0].content[0].image_url"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "mp3"}}]}]},
         "input[0].content[0].input_audio.format"),
        ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]}, "input[0].content[0].type"),
        ({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ],
)  # fmt: skip
def test_what_is_not_served_is_refused_by_name(fields: dict, param: str):
    error = refused(**fields)
    assert isinstance(error, InvalidArgument) and error.field == param


def test_an_unknown_model_is_not_found():
    error = refused(model="gpt-5")
    assert isinstance(error, NotFound) and error.field == "model"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"temperature": 3}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x", "txt": "y"}]}]},
            "input[0].content[0].txt",
        ),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
        ({"text": {"format": {"type": "json_schema", "name": "w"}}}, "text.format.schema"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "\ud800"}}, "metadata"),
        ({"instructions": "\ud800"}, "instructions"),
    ],
)
def test_bodies_the_schema_refuses_name_the_field(fields: dict, param: str):
    assert invalid_body(**fields) == param


def test_a_lone_surrogate_in_a_schema_is_refused_by_name():
    error = refused(tools=[{"type": "function", "name": "f", "parameters": {"description": "\ud800"}}])
    assert error.field == "tools[0].parameters"
