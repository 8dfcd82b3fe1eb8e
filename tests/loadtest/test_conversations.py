"""The multi-turn workload and its planner: the `conversation` schema, seeded plans within
their ranges, one system prompt per tenant entry, growing histories, and the transports'
message lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from museserve.v1 import chat_pb2 as pb
from museserve_loadtest.conversations import (
    BLANK_ANSWER,
    ConversationPlan,
    plan_conversations,
    system_prompts,
    turn_messages,
    turn_request,
)
from museserve_loadtest.grpc_transport import to_proto
from museserve_loadtest.http_transport import record_chunk, to_openai
from museserve_loadtest.plan import ChatMessage, RequestSpec
from museserve_loadtest.records import Sample
from museserve_loadtest.workload import Workload, WorkloadError, load_workload, parse_workload

WORKLOADS = Path(__file__).resolve().parents[2] / "loadtest" / "workloads"

SMALL = {
    "name": "conv",
    "output_tokens": {"dist": "uniform", "min": 16, "max": 64},
    "tenants": [{"name": f"t{i}", "key_env": "ONE_KEY"} for i in range(4)],
    "conversation": {
        "turns": {"dist": "uniform", "min": 3, "max": 6},
        "system_prompt_words": {"dist": "uniform", "min": 100, "max": 180},
        "user_words": {"dist": "uniform", "min": 20, "max": 80},
        "think_time_s": {"min": 0.5, "max": 2.0},
    },
}


def _workload(**changes: object) -> Workload:
    return parse_workload({**SMALL, **changes})


def _plans(workload: Workload, n: int = 40, seed: int = 7, salt: str = "") -> list[ConversationPlan]:
    return plan_conversations(workload, [0.1 * i for i in range(n)], {"t0": "k0"}, seed=seed, salt=salt)


def test_the_shipped_multiturn_workload_parses_with_a_prompt_per_tenant():
    path = WORKLOADS / "multiturn.yaml"
    workload = load_workload("multiturn")
    assert workload.name == "multiturn" and workload.conversation is not None and len(workload.tenants) >= 6
    assert all(t.key_env for t in workload.tenants) and "sk-" not in path.read_text()
    assert workload.modes[0].mode == "instant" and workload.temperature == 0
    prompts = system_prompts(workload, seed=1)
    assert len(set(prompts)) == len(workload.tenants)
    assert all(1000 <= len(p.split()) <= 1800 + 10 for p in prompts)  # + the header naming the entry


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"modalities": [{"kind": "text"}, {"kind": "image"}]}, "conversation"),
        ({"shared_prefix": {"fraction": 0.5, "words": 10}}, "conversation"),
        ({"tenants": [{"name": "a"}, {"name": "a"}]}, "conversation"),
        ({"conversation": {"think_time_s": {"min": 2, "max": 1}}}, "conversation.think_time_s"),
        ({"conversation": {"turns": {"dist": "uniform", "min": 0, "max": 2}}}, "conversation.turns.min"),
        ({"conversation": {"rounds": 3}}, "conversation.rounds"),
    ],
)
def test_conversation_errors_name_the_key(changes: dict, field: str):
    with pytest.raises(WorkloadError) as e:
        parse_workload({**SMALL, **changes}, source="bad.yaml")
    assert e.value.field == field


def test_workloads_without_a_conversation_are_unchanged():
    workload = parse_workload({"name": "w", "tenants": [{"name": "a"}, {"name": "a"}]})
    assert workload.conversation is None  # repeated names stay allowed outside conversations
    with pytest.raises(ValueError, match="no conversation section"):
        plan_conversations(workload, [0.0], {})


def test_plans_are_seeded_and_within_their_ranges():
    workload = _workload()
    plans = _plans(workload)
    assert plans == _plans(workload) and plans != _plans(workload, seed=8)
    assert _plans(workload, n=10) == plans[:10]  # the first conversations do not depend on how many follow
    assert {p.turns for p in plans} == {3, 4, 5, 6}
    for plan in plans:
        assert len(plan.max_output_tokens) == plan.turns and len(plan.think_times_s) == plan.turns - 1
        assert all(16 <= n <= 64 for n in plan.max_output_tokens)
        assert all(0.5 <= s <= 2.0 for s in plan.think_times_s)
        nonce = 4  # "conversation {c} turn {k}:"
        assert all(20 <= len(text.split()) - nonce <= 80 for text in plan.user_turns)
    assert [p.start_s for p in plans] == pytest.approx([0.1 * i for i in range(40)])
    assert {p.api_key for p in plans if p.tenant == "t0"} == {"k0"} and {
        p.api_key for p in plans if p.tenant != "t0"
    } == {None}


def test_each_tenant_entry_has_its_own_system_prompt_even_with_one_key():
    workload = _workload()
    prompts = system_prompts(workload, seed=3)
    assert len(set(prompts)) == 4 and all(100 <= len(p.split()) <= 190 for p in prompts)
    assert prompts == system_prompts(workload, seed=3) and prompts != system_prompts(workload, seed=4)
    by_tenant = {p.tenant: p.system_prompt for p in _plans(workload)}
    assert len(by_tenant) == 4 and len(set(by_tenant.values())) == 4
    # A salt heads every prompt and changes nothing else.
    salted = system_prompts(workload, seed=3, salt="run-b ")
    assert salted == tuple("run-b " + p for p in prompts)
    assert [p.user_turns for p in _plans(workload, salt="x ")] == [p.user_turns for p in _plans(workload)]


def test_each_turn_extends_the_last_by_its_answer_and_one_user_turn():
    plan = max(_plans(_workload()), key=lambda p: p.turns)
    answers = [f"answer to turn {k}" for k in range(plan.turns)]
    previous = turn_messages(plan, 0, [])
    assert previous == (ChatMessage("system", plan.system_prompt), ChatMessage("user", plan.user_turns[0]))
    for k in range(1, plan.turns):
        messages = turn_messages(plan, k, answers[:k])
        assert messages[: len(previous)] == previous
        assert messages[len(previous) :] == (
            ChatMessage("assistant", answers[k - 1]),
            ChatMessage("user", plan.user_turns[k]),
        )
        previous = messages
    assert len(previous) == 2 * plan.turns
    with pytest.raises(ValueError):
        turn_messages(plan, 2, answers[:1])
    with pytest.raises(IndexError):
        turn_messages(plan, plan.turns, answers)


def test_a_blank_answer_keeps_its_place_in_the_history():
    plan = _plans(_workload())[0]
    assert turn_messages(plan, 1, ["  \n"])[2] == ChatMessage("assistant", BLANK_ANSWER)


def test_a_turn_request_carries_the_plan():
    plan = _plans(_workload())[0]
    spec = turn_request(plan, 1, ["an answer"], index=9)
    assert spec.index == 9 and spec.messages == turn_messages(plan, 1, ["an answer"])
    assert spec.max_output_tokens == plan.max_output_tokens[1] and spec.tenant == plan.tenant
    assert spec.mode == "instant" and spec.prompt_words == sum(len(m.text.split()) for m in spec.messages)


def test_transports_send_the_history_with_roles():
    history = (ChatMessage("system", "be brief"), ChatMessage("user", "hi"), ChatMessage("assistant", "hello"),
               ChatMessage("user", "again"))  # fmt: skip
    spec = RequestSpec(index=0, prompt="", max_output_tokens=8, messages=history, temperature=0.0)
    request = to_proto(spec)
    assert [m.role for m in request.messages] == [pb.ROLE_SYSTEM, pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_USER]
    assert [m.content[0].text for m in request.messages] == ["be brief", "hi", "hello", "again"]
    body = to_openai(spec)
    assert body["messages"] == [{"role": m.role, "content": m.text} for m in history]
    assert body["temperature"] == 0.0


def test_the_single_prompt_path_is_unchanged():
    spec = RequestSpec(index=0, prompt="one prompt", max_output_tokens=8, images=(b"png",))
    request = to_proto(spec)
    assert len(request.messages) == 1 and request.messages[0].role == pb.ROLE_USER
    assert request.messages[0].content[0].text == "one prompt" and request.messages[0].content[1].image.data == b"png"
    message = to_openai(spec)["messages"]
    assert len(message) == 1 and message[0]["content"][0] == {"type": "text", "text": "one prompt"}


def test_answer_text_is_kept_only_when_asked():
    chunk = {"choices": [{"delta": {"content": "Hel"}}]}
    keeping, plain = Sample(0, 0.0, answer_parts=[]), Sample(1, 0.0)
    for sample in (keeping, plain):
        record_chunk(chunk, sample, 1.0)
        record_chunk({"choices": [{"delta": {"reasoning_content": "hmm"}}]}, sample, 1.1)
        record_chunk({"choices": [{"delta": {"content": "lo"}}]}, sample, 1.2)
    assert keeping.answer == "Hello" and plain.answer == "" and plain.answer_parts is None
    assert len(keeping.token_times) == len(plain.token_times) == 3
