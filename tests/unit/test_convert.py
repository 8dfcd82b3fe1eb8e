from __future__ import annotations

import pytest

from museserve.api.convert import (
    event_to_pb,
    model_info_to_pb,
    request_from_pb,
    result_to_pb,
    tool_call_to_pb,
    usage_to_pb,
)
from museserve.domain import (
    AgentProgress,
    AudioPart,
    ChatResult,
    Finish,
    FinishReason,
    Identity,
    ImagePart,
    Mode,
    ModelInfo,
    ReasoningDelta,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallEvent,
    ToolChoice,
    ToolChoiceKind,
    ToolSpec,
    Usage,
)
from museserve.errors import InvalidArgument
from museserve.v1 import chat_pb2 as pb

IDENTITY = Identity(tenant="acme", user="u1", tier="gold")
PNG = b"\x89PNG\r\n\x1a\nfake"


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text=text)])


def convert(msg: pb.ChatRequest):
    return request_from_pb(msg, "req-1", IDENTITY)


def refusal(msg: pb.ChatRequest) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        convert(msg)
    return info.value


def full_request() -> pb.ChatRequest:
    return pb.ChatRequest(
        model="muse-tiny",
        request_id="client-chosen",
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text="be brief")]),
            pb.Message(
                role=pb.ROLE_USER,
                name="alice",
                content=[
                    pb.ContentPart(text="look: "),
                    pb.ContentPart(image=pb.Image(data=PNG, mime_type="image/png")),
                    pb.ContentPart(image=pb.Image(url="https://example.com/a.jpg")),
                    pb.ContentPart(audio=pb.Audio(data=b"RIFF", format="wav")),
                    pb.ContentPart(text=" and listen"),
                ],
            ),
            pb.Message(
                role=pb.ROLE_ASSISTANT,
                content=[pb.ContentPart(text="calling")],
                tool_calls=[
                    pb.ToolCall(id="c1", name="search", arguments_json='{"q": "x"}'),
                    pb.ToolCall(id="c2", name="clock", arguments_json="{}"),
                ],
            ),
            pb.Message(role=pb.ROLE_TOOL, tool_call_id="c1", content=[pb.ContentPart(text="result")]),
        ],
        tools=[
            pb.Tool(name="search", description="web search", parameters_json_schema='{"type": "object"}'),
            pb.Tool(name="clock", description="time", parameters_json_schema=""),
        ],
        tool_choice=pb.ToolChoice(kind=pb.ToolChoice.KIND_NAMED, name="search"),
        sampling=pb.SamplingParams(
            temperature=0.5, top_p=0.25, top_k=40, seed=1234, max_output_tokens=77, stop=["END", "\n\n"]
        ),
        mode=pb.ModeParams(mode=pb.MODE_THINKING, thinking_budget=300),
    )


# ---- request_from_pb ----


def test_full_request_top_level() -> None:
    request = convert(full_request())
    assert request.request_id == "req-1"  # the id given by the caller, not the body's
    assert request.model == "muse-tiny"
    assert request.identity == IDENTITY


def test_full_request_roles_in_order() -> None:
    request = convert(full_request())
    assert [m.role for m in request.messages] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL]


def test_full_request_parts_in_order() -> None:
    parts = convert(full_request()).messages[1].parts
    assert parts == (
        TextPart("look: "),
        ImagePart(data=PNG, mime_type="image/png"),
        ImagePart(url="https://example.com/a.jpg"),
        AudioPart(data=b"RIFF", format="wav"),
        TextPart(" and listen"),
    )
    assert parts[1].url is None
    assert parts[2].data is None


def test_full_request_message_fields() -> None:
    system, user_msg, assistant, tool = convert(full_request()).messages
    assert system.text == "be brief"
    assert user_msg.name == "alice"
    assert user_msg.text == "look:  and listen"
    assert assistant.tool_calls == (
        ToolCall("c1", "search", '{"q": "x"}'),
        ToolCall("c2", "clock", "{}"),
    )
    assert tool.tool_call_id == "c1"
    assert tool.tool_calls == ()
    assert system.tool_call_id == "" and system.name == ""


def test_full_request_tools_and_choice() -> None:
    request = convert(full_request())
    assert request.tools == (
        ToolSpec("search", "web search", '{"type": "object"}'),
        ToolSpec("clock", "time", ""),
    )
    assert request.tool_choice == ToolChoice(ToolChoiceKind.NAMED, "search")


def test_full_request_sampling_set() -> None:
    assert convert(full_request()).sampling == SamplingParams(
        temperature=0.5, top_p=0.25, top_k=40, seed=1234, max_output_tokens=77, stop=("END", "\n\n")
    )


def test_full_request_mode() -> None:
    mode = convert(full_request()).mode
    assert mode.mode is Mode.THINKING
    assert mode.thinking_budget == 300
    assert mode.num_agents is None


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (pb.ToolChoice.KIND_AUTO, ToolChoiceKind.AUTO),
        (pb.ToolChoice.KIND_NONE, ToolChoiceKind.NONE),
        (pb.ToolChoice.KIND_REQUIRED, ToolChoiceKind.REQUIRED),
        (pb.ToolChoice.KIND_NAMED, ToolChoiceKind.NAMED),
    ],
)
def test_each_tool_choice_kind(kind: int, expected: ToolChoiceKind) -> None:
    msg = pb.ChatRequest(
        messages=[user("hi")],
        tools=[pb.Tool(name="t")],
        tool_choice=pb.ToolChoice(kind=kind, name="t"),
    )
    assert convert(msg).tool_choice == ToolChoice(expected, "t")


def test_unspecified_tool_choice_is_auto_with_tools() -> None:
    msg = pb.ChatRequest(messages=[user("hi")], tools=[pb.Tool(name="t")])
    assert convert(msg).tool_choice == ToolChoice(ToolChoiceKind.AUTO)


def test_unspecified_tool_choice_is_none_without_tools() -> None:
    assert convert(pb.ChatRequest(messages=[user("hi")])).tool_choice == ToolChoice(ToolChoiceKind.NONE)


def test_unset_sampling_stays_unset_for_the_models_defaults() -> None:
    sampling = convert(pb.ChatRequest(messages=[user("hi")])).sampling
    assert sampling == SamplingParams()
    assert sampling.temperature is None  # the preprocess tier fills in the checkpoint's defaults
    assert sampling.top_p is None
    assert sampling.top_k is None
    assert sampling.repetition_penalty is None
    assert sampling.seed is None
    assert sampling.max_output_tokens is None
    assert sampling.stop == ()


def test_explicit_zeros_stay_zero() -> None:
    msg = pb.ChatRequest(messages=[user("hi")], sampling=pb.SamplingParams(temperature=0.0, seed=0))
    sampling = convert(msg).sampling
    assert sampling.temperature == 0.0
    assert sampling.seed == 0
    assert sampling.top_p is None
    assert sampling.max_output_tokens is None


def test_explicit_zero_max_output_is_kept_for_validation() -> None:
    msg = pb.ChatRequest(messages=[user("hi")], sampling=pb.SamplingParams(max_output_tokens=0, top_p=0.0))
    sampling = convert(msg).sampling
    assert sampling.max_output_tokens == 0
    assert sampling.top_p == 0.0


def test_a_request_may_turn_speculation_off() -> None:
    assert convert(pb.ChatRequest(messages=[user("hi")])).sampling.speculative
    off = pb.ChatRequest(messages=[user("hi")], sampling=pb.SamplingParams(speculative=pb.SPECULATION_OFF))
    assert not convert(off).sampling.speculative
    unknown = pb.ChatRequest(messages=[user("hi")], sampling=pb.SamplingParams(speculative=7))
    with pytest.raises(InvalidArgument) as refused:
        convert(unknown)
    assert refused.value.field == "sampling.speculative"


def test_unspecified_mode_is_instant() -> None:
    mode = convert(pb.ChatRequest(messages=[user("hi")])).mode
    assert mode.mode is Mode.INSTANT
    assert mode.thinking_budget is None
    assert mode.num_agents is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(pb.MODE_INSTANT, Mode.INSTANT), (pb.MODE_THINKING, Mode.THINKING), (pb.MODE_CONTEMPLATING, Mode.CONTEMPLATING)],
)
def test_each_mode(value: int, expected: Mode) -> None:
    assert convert(pb.ChatRequest(messages=[user("hi")], mode=pb.ModeParams(mode=value))).mode.mode is expected


def test_optional_mode_fields_set() -> None:
    msg = pb.ChatRequest(
        messages=[user("hi")], mode=pb.ModeParams(mode=pb.MODE_CONTEMPLATING, thinking_budget=0, num_agents=3)
    )
    mode = convert(msg).mode
    assert mode.thinking_budget == 0
    assert mode.num_agents == 3


def test_no_messages_converts_to_empty_tuple() -> None:
    assert convert(pb.ChatRequest()).messages == ()


# ---- request_from_pb refusals ----


def test_unspecified_role_is_refused() -> None:
    msg = pb.ChatRequest(messages=[user("hi"), pb.Message(content=[pb.ContentPart(text="x")])])
    error = refusal(msg)
    assert error.field == "messages[1].role"
    assert "must be set" in error.message


def test_unknown_role_value_is_refused() -> None:
    msg = pb.ChatRequest(messages=[pb.Message(role=9, content=[pb.ContentPart(text="x")])])
    error = refusal(msg)
    assert error.field == "messages[0].role"
    assert "9" in error.message


def test_unset_content_part_is_refused() -> None:
    msg = pb.ChatRequest(
        messages=[
            pb.Message(
                role=pb.ROLE_USER,
                content=[pb.ContentPart(text="a"), pb.ContentPart(text="b"), pb.ContentPart()],
            )
        ]
    )
    assert refusal(msg).field == "messages[0].content[2]"


def test_image_without_source_is_refused() -> None:
    part = pb.ContentPart(image=pb.Image(mime_type="image/png"))
    msg = pb.ChatRequest(messages=[user("hi"), pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="a"), part])])
    assert refusal(msg).field == "messages[1].content[1].image"


def test_empty_image_data_is_still_data() -> None:
    part = pb.ContentPart(image=pb.Image(data=b""))
    msg = pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content=[part])])
    assert convert(msg).messages[0].parts == (ImagePart(data=b""),)


def test_unknown_mode_is_refused() -> None:
    error = refusal(pb.ChatRequest(messages=[user("hi")], mode=pb.ModeParams(mode=42)))
    assert error.field == "mode.mode"
    assert "42" in error.message


def test_unknown_tool_choice_kind_is_refused() -> None:
    msg = pb.ChatRequest(messages=[user("hi")], tools=[pb.Tool(name="t")], tool_choice=pb.ToolChoice(kind=17))
    assert refusal(msg).field == "tool_choice.kind"


def test_refusals_are_invalid_argument_errors() -> None:
    error = refusal(pb.ChatRequest(messages=[pb.Message()]))
    assert type(error) is InvalidArgument


# ---- to protobuf ----


def test_text_delta_to_pb() -> None:
    event = event_to_pb(TextDelta("hello"), "r")
    assert event.WhichOneof("event") == "text_delta"
    assert event.text_delta == "hello"


def test_reasoning_delta_to_pb() -> None:
    event = event_to_pb(ReasoningDelta("hmm"), "r")
    assert event.WhichOneof("event") == "reasoning_delta"
    assert event.reasoning_delta == "hmm"


def test_empty_text_delta_still_sets_the_oneof() -> None:
    assert event_to_pb(TextDelta(""), "r").WhichOneof("event") == "text_delta"


def test_tool_call_event_to_pb() -> None:
    event = event_to_pb(ToolCallEvent(ToolCall("c9", "search", '{"q": 1}')), "r")
    assert event.WhichOneof("event") == "tool_call"
    assert event.tool_call == pb.ToolCall(id="c9", name="search", arguments_json='{"q": 1}')


def test_agent_progress_to_pb() -> None:
    event = event_to_pb(AgentProgress(agent_index=3, generated_tokens=120, done=True), "r")
    assert event.WhichOneof("event") == "agent_progress"
    assert event.agent_progress == pb.AgentProgress(agent_index=3, generated_tokens=120, done=True)


def test_usage_event_to_pb() -> None:
    event = event_to_pb(Usage(prompt_tokens=10, cached_tokens=4, reasoning_tokens=5, output_tokens=7), "r")
    assert event.WhichOneof("event") == "usage"
    assert event.usage == pb.Usage(
        prompt_tokens=10, cached_tokens=4, reasoning_tokens=5, output_tokens=7, total_tokens=22
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (FinishReason.STOP, pb.FINISH_REASON_STOP),
        (FinishReason.LENGTH, pb.FINISH_REASON_LENGTH),
        (FinishReason.TOOL_CALLS, pb.FINISH_REASON_TOOL_CALLS),
        (FinishReason.CANCELLED, pb.FINISH_REASON_CANCELLED),
    ],
)
def test_finish_event_to_pb(reason: FinishReason, expected: int) -> None:
    event = event_to_pb(Finish(reason, "muse-tiny"), "req-7")
    assert event.WhichOneof("event") == "finish"
    assert event.finish == pb.Finish(reason=expected, model="muse-tiny", request_id="req-7")


def test_non_event_is_refused() -> None:
    with pytest.raises(TypeError):
        event_to_pb("text", "r")  # type: ignore[arg-type]


def test_usage_to_pb_total() -> None:
    usage = usage_to_pb(Usage(prompt_tokens=100, cached_tokens=60, reasoning_tokens=20, output_tokens=3))
    assert usage.total_tokens == 123  # cached tokens are part of the prompt, not added again
    assert (usage.prompt_tokens, usage.cached_tokens, usage.reasoning_tokens, usage.output_tokens) == (100, 60, 20, 3)


def test_tool_call_to_pb() -> None:
    assert tool_call_to_pb(ToolCall("a", "b", "{}")) == pb.ToolCall(id="a", name="b", arguments_json="{}")


def test_result_to_pb() -> None:
    result = ChatResult(
        text="answer",
        reasoning="thoughts",
        tool_calls=(ToolCall("c1", "f", "{}"), ToolCall("c2", "g", '{"x": 1}')),
        usage=Usage(prompt_tokens=5, reasoning_tokens=2, output_tokens=3),
        finish_reason=FinishReason.TOOL_CALLS,
        model="muse-tiny",
    )
    response = result_to_pb(result, "req-3")
    assert response.text == "answer"
    assert response.reasoning == "thoughts"
    assert [c.id for c in response.tool_calls] == ["c1", "c2"]
    assert response.tool_calls[1].arguments_json == '{"x": 1}'
    assert response.usage.total_tokens == 10
    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert response.model == "muse-tiny"
    assert response.request_id == "req-3"


def test_model_info_to_pb() -> None:
    info = ModelInfo("muse-tiny", 4096, 512, (Mode.INSTANT, Mode.THINKING, Mode.CONTEMPLATING))
    msg = model_info_to_pb(info, is_default=True)
    assert msg.name == "muse-tiny"
    assert msg.context_length == 4096
    assert msg.max_output_tokens == 512
    assert list(msg.modes) == [pb.MODE_INSTANT, pb.MODE_THINKING, pb.MODE_CONTEMPLATING]
    assert msg.is_default is True
    assert model_info_to_pb(info, is_default=False).is_default is False


@pytest.mark.parametrize(
    "event",
    [
        TextDelta("héllo 世界"),
        ReasoningDelta("because"),
        ToolCallEvent(ToolCall("c1", "f", '{"a": [1, 2]}')),
        AgentProgress(1, 42, False),
        Usage(3, 1, 2, 4),
        Finish(FinishReason.LENGTH, "muse-tiny"),
    ],
)
def test_chat_event_wire_round_trip(event: StreamEvent) -> None:
    original = event_to_pb(event, "req-rt")
    wire = original.SerializeToString()
    decoded = pb.ChatEvent.FromString(wire)
    assert decoded == original
    assert decoded.WhichOneof("event") == original.WhichOneof("event")


def test_request_wire_round_trip_converts_identically() -> None:
    msg = full_request()
    decoded = pb.ChatRequest.FromString(msg.SerializeToString())
    assert convert(decoded) == convert(msg)
