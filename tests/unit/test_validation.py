from __future__ import annotations

import dataclasses

import pytest

from museserve.config import EngineConfig, PoolConfig, RequestLimits
from museserve.domain import (
    AudioPart,
    ChatRequest,
    ImagePart,
    Message,
    Mode,
    ModeParams,
    Role,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
)
from museserve.errors import FailedPrecondition, InvalidArgument
from museserve.gateway.validation import validate_request

POOL = PoolConfig(
    name="muse-test",
    modes=(Mode.INSTANT, Mode.THINKING),
    engine=EngineConfig(context_length=4096, max_output_tokens=100, default_max_output_tokens=10),
)
CONTEMPLATING_POOL = POOL.model_copy(update={"modes": (Mode.INSTANT, Mode.THINKING, Mode.CONTEMPLATING)})
LIMITS = RequestLimits(
    max_messages=4,
    max_parts_per_message=3,
    max_text_bytes=100,
    max_stop_strings=2,
    max_stop_string_chars=5,
    max_tools=3,
)


def user(text: str = "hello", *parts: TextPart | ImagePart | AudioPart) -> Message:
    return Message(Role.USER, (TextPart(text), *parts))


def request(*messages: Message, **fields: object) -> ChatRequest:
    return ChatRequest(request_id="r", messages=messages or (user(),), **fields)  # type: ignore[arg-type]


def sampling(**fields: object) -> ChatRequest:
    return request(sampling=SamplingParams(**fields))  # type: ignore[arg-type]


def mode(m: Mode, **fields: object) -> ChatRequest:
    return request(mode=ModeParams(m, **fields))  # type: ignore[arg-type]


def tool(name: str = "search", schema: str = '{"type": "object"}') -> ToolSpec:
    return ToolSpec(name, "a tool", schema)


def refused_field(req: ChatRequest, pool: PoolConfig = POOL) -> str:
    with pytest.raises(InvalidArgument) as info:
        validate_request(req, pool, LIMITS)
    assert info.value.message
    return info.value.field


def accepted(req: ChatRequest, pool: PoolConfig = POOL) -> None:
    validate_request(req, pool, LIMITS)


# ---- accepted ----


def test_normal_request_is_accepted() -> None:
    accepted(
        request(
            Message(Role.SYSTEM, (TextPart("be brief"),)),
            user("what is 2+2?"),
            tools=(tool(),),
            tool_choice=ToolChoice(ToolChoiceKind.NAMED, "search"),
            sampling=SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=1, max_output_tokens=50, stop=("x",)),
            mode=ModeParams(Mode.THINKING, thinking_budget=20),
        )
    )


def test_conversation_with_tool_round_is_accepted() -> None:
    accepted(
        request(
            user("weather?"),
            Message(Role.ASSISTANT, (), tool_calls=(ToolCall("c1", "search", "{}"),)),
            Message(Role.TOOL, (TextPart("sunny"),), tool_call_id="c1"),
        )
    )


def test_assistant_message_with_only_tool_calls_is_accepted() -> None:
    accepted(request(user(), Message(Role.ASSISTANT, (), tool_calls=(ToolCall("c", "f", "{}"),)), user()))


def test_limits_are_inclusive() -> None:
    accepted(request(user(), user(), user(), Message(Role.USER, (TextPart("a"), TextPart("b"), TextPart("c")))))
    accepted(request(user("x" * 100)))
    accepted(request(tools=(tool("a"), tool("b"), tool("c"))))


def test_media_parts_count_as_content() -> None:
    accepted(request(Message(Role.USER, (ImagePart(url="https://x/y.png"),))))
    accepted(request(Message(Role.USER, (AudioPart(b"RIFF", "wav"),))))


# ---- messages ----


def test_empty_messages() -> None:
    assert refused_field(ChatRequest(request_id="r", messages=())) == "messages"


def test_too_many_messages() -> None:
    assert refused_field(request(*[user()] * 5)) == "messages"


def test_too_many_parts() -> None:
    many = Message(Role.USER, tuple(TextPart(str(i)) for i in range(4)))
    assert refused_field(request(user(), many)) == "messages[1].content"


def test_whitespace_only_content() -> None:
    assert refused_field(request(user(), Message(Role.USER, (TextPart(" \n\t"),)))) == "messages[1].content"


def test_no_parts_at_all() -> None:
    assert refused_field(request(Message(Role.USER, ()))) == "messages[0].content"


def test_assistant_message_without_content_or_calls() -> None:
    assert refused_field(request(user(), Message(Role.ASSISTANT, ()), user())) == "messages[1].content"


def test_tool_message_without_call_id() -> None:
    assert refused_field(request(user(), Message(Role.TOOL, (TextPart("42"),)))) == "messages[1].tool_call_id"


def test_tool_calls_on_user_message() -> None:
    msg = Message(Role.USER, (TextPart("hi"),), tool_calls=(ToolCall("c", "f", "{}"),))
    assert refused_field(request(msg)) == "messages[0].tool_calls"


def test_total_text_over_max_bytes() -> None:
    assert refused_field(request(user("x" * 60), user("y" * 41))) == "messages"


def test_text_limit_counts_utf8_bytes() -> None:
    assert refused_field(request(user("é" * 51))) == "messages"  # 102 bytes, 51 characters
    accepted(request(user("é" * 50)))


def test_last_message_from_assistant() -> None:
    assert refused_field(request(user(), Message(Role.ASSISTANT, (TextPart("sure"),)))) == "messages[1].role"


def test_image_with_both_data_and_url() -> None:
    part = ImagePart(data=b"png", url="https://x/y.png")
    assert refused_field(request(user("a", part))) == "messages[0].content[1].image"


def test_image_with_neither_data_nor_url() -> None:
    assert refused_field(request(user(), user("a", TextPart("b"), ImagePart()))) == "messages[1].content[2].image"


def test_empty_audio_data() -> None:
    assert refused_field(request(user("a", AudioPart(b"", "wav")))) == "messages[0].content[1].audio.data"


# ---- tools ----


def test_too_many_tools() -> None:
    assert refused_field(request(tools=(tool("a"), tool("b"), tool("c"), tool("d")))) == "tools"


@pytest.mark.parametrize("name", ["", "has space", "dot.name", "x" * 65, "ünï", "newline_at_end\n"])
def test_bad_tool_name(name: str) -> None:
    assert refused_field(request(tools=(tool("ok"), tool(name)))) == "tools[1].name"


def test_longest_tool_name_is_accepted() -> None:
    accepted(request(tools=(tool("A-z_9" + "x" * 59),)))


def test_duplicate_tool() -> None:
    assert refused_field(request(tools=(tool("a"), tool("b"), tool("a")))) == "tools[2].name"


def test_tool_schema_not_json() -> None:
    assert refused_field(request(tools=(tool(schema="{type: object"),))) == "tools[0].parameters_json_schema"


@pytest.mark.parametrize("schema", ["[]", '"object"', "3", "null"])
def test_tool_schema_not_an_object(schema: str) -> None:
    assert refused_field(request(tools=(tool("a"), tool("b", schema)))) == "tools[1].parameters_json_schema"


def test_empty_tool_schema_is_accepted() -> None:
    accepted(request(tools=(tool(schema=""),)))


def test_required_without_tools() -> None:
    assert refused_field(request(tool_choice=ToolChoice(ToolChoiceKind.REQUIRED))) == "tool_choice.kind"


def test_named_without_tools() -> None:
    assert refused_field(request(tool_choice=ToolChoice(ToolChoiceKind.NAMED, "search"))) == "tool_choice.kind"


def test_named_unknown_tool() -> None:
    req = request(tools=(tool("search"),), tool_choice=ToolChoice(ToolChoiceKind.NAMED, "other"))
    assert refused_field(req) == "tool_choice.name"


def test_none_and_auto_without_tools_are_accepted() -> None:
    accepted(request(tool_choice=ToolChoice(ToolChoiceKind.NONE)))
    accepted(request(tool_choice=ToolChoice(ToolChoiceKind.AUTO)))


def test_required_with_tools_is_accepted() -> None:
    accepted(request(tools=(tool(),), tool_choice=ToolChoice(ToolChoiceKind.REQUIRED)))


# ---- sampling ----


@pytest.mark.parametrize("temperature", [-0.01, 2.01, float("nan")])
def test_temperature_out_of_range(temperature: float) -> None:
    assert refused_field(sampling(temperature=temperature)) == "sampling.temperature"


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_temperature_bounds_are_accepted(temperature: float) -> None:
    accepted(sampling(temperature=temperature))


@pytest.mark.parametrize("top_p", [0.0, 1.01, -0.5])
def test_top_p_out_of_range(top_p: float) -> None:
    assert refused_field(sampling(top_p=top_p)) == "sampling.top_p"


def test_top_p_one_and_tiny_are_accepted() -> None:
    accepted(sampling(top_p=1.0))
    accepted(sampling(top_p=1e-6))


def test_negative_top_k() -> None:
    assert refused_field(sampling(top_k=-1)) == "sampling.top_k"


@pytest.mark.parametrize("max_output_tokens", [0, -1, 101])
def test_max_output_tokens_out_of_range(max_output_tokens: int) -> None:
    assert refused_field(sampling(max_output_tokens=max_output_tokens)) == "sampling.max_output_tokens"


def test_max_output_tokens_cap_is_accepted() -> None:
    accepted(sampling(max_output_tokens=100))
    accepted(sampling(max_output_tokens=1))


def test_max_output_tokens_refusal_names_the_pool() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_request(sampling(max_output_tokens=101), POOL, LIMITS)
    assert "100" in info.value.message
    assert "muse-test" in info.value.message


def test_too_many_stops() -> None:
    assert refused_field(sampling(stop=("a", "b", "c"))) == "sampling.stop"


def test_empty_stop() -> None:
    assert refused_field(sampling(stop=("a", ""))) == "sampling.stop[1]"


def test_too_long_stop() -> None:
    assert refused_field(sampling(stop=("abcdef",))) == "sampling.stop[0]"
    accepted(sampling(stop=("abcde", "z")))


# ---- mode ----


def unserved_mode(req: ChatRequest, pool: PoolConfig = POOL) -> FailedPrecondition:
    """A mode the pool does not serve is a precondition of the model, not a malformed field."""
    with pytest.raises(FailedPrecondition) as info:
        validate_request(req, pool, LIMITS)
    assert info.value.field == "mode.mode"
    return info.value


def test_mode_not_in_pool() -> None:
    assert "muse-test does not serve mode contemplating (it serves: instant, thinking)" in str(
        unserved_mode(mode(Mode.CONTEMPLATING))
    )
    accepted(mode(Mode.CONTEMPLATING), CONTEMPLATING_POOL)


def test_instant_only_pool_refuses_thinking() -> None:
    unserved_mode(mode(Mode.THINKING), POOL.model_copy(update={"modes": (Mode.INSTANT,)}))


def test_thinking_budget_on_instant() -> None:
    assert refused_field(mode(Mode.INSTANT, thinking_budget=10)) == "mode.thinking_budget"
    assert refused_field(mode(Mode.INSTANT, thinking_budget=0)) == "mode.thinking_budget"


def test_negative_thinking_budget() -> None:
    assert refused_field(mode(Mode.THINKING, thinking_budget=-1)) == "mode.thinking_budget"


def test_thinking_budget_over_cap() -> None:
    assert refused_field(mode(Mode.THINKING, thinking_budget=101)) == "mode.thinking_budget"


def test_thinking_budget_bounds_are_accepted() -> None:
    accepted(mode(Mode.THINKING, thinking_budget=0))
    accepted(mode(Mode.THINKING, thinking_budget=100))


@pytest.mark.parametrize("num_agents", [1, 9, 0, -2])
def test_num_agents_out_of_range(num_agents: int) -> None:
    assert refused_field(mode(Mode.CONTEMPLATING, num_agents=num_agents), CONTEMPLATING_POOL) == "mode.num_agents"


@pytest.mark.parametrize("num_agents", [2, 8])
def test_num_agents_bounds_are_accepted(num_agents: int) -> None:
    accepted(mode(Mode.CONTEMPLATING, num_agents=num_agents, thinking_budget=5), CONTEMPLATING_POOL)


def test_num_agents_on_thinking() -> None:
    assert refused_field(mode(Mode.THINKING, num_agents=4), CONTEMPLATING_POOL) == "mode.num_agents"


# ---- order ----


def test_first_problem_wins() -> None:
    req = dataclasses.replace(
        request(Message(Role.USER, ())), sampling=SamplingParams(temperature=9), mode=ModeParams(Mode.CONTEMPLATING)
    )
    assert refused_field(req) == "messages[0].content"
