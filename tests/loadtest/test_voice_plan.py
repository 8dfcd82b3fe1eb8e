"""The voice workload and its planner: the `voice` schema and its checks, the shipped file,
seeded session plans within their ranges, and the session request they make."""

from __future__ import annotations

from pathlib import Path

import pytest

from museserve.v1 import chat_pb2 as pb
from museserve_loadtest.voice_plan import VoiceSessionPlan, plan_sessions, voice_spec
from museserve_loadtest.voice_session import session_request
from museserve_loadtest.workload import Workload, WorkloadError, load_workload, parse_workload

WORKLOADS = Path(__file__).resolve().parents[2] / "loadtest" / "workloads"

SMALL = {
    "name": "talk",
    "model": "muse-tiny",
    "temperature": 0,
    "modes": [{"mode": "instant", "weight": 3}, {"mode": "thinking", "weight": 1, "thinking_budget": 16}],
    "output_tokens": {"dist": "uniform", "min": 8, "max": 32},
    "tenants": [{"name": "a", "key_env": "KEY_A"}, {"name": "b", "key_env": "KEY_B", "user": "bob"}],
    "voice": {
        "turns": {"dist": "uniform", "min": 2, "max": 4},
        "utterance_s": {"min": 3, "max": 10},
        "think_time_s": {"min": 0.5, "max": 2.0},
        "system_prompt_words": {"dist": "fixed", "value": 12},
    },
}


def _workload(**changes: object) -> Workload:
    return parse_workload({**SMALL, **changes})


def _plans(workload: Workload, n: int = 50, seed: int = 7, corpus_size: int = 0) -> list[VoiceSessionPlan]:
    return plan_sessions(workload, [0.5 * i for i in range(n)], {"a": "ka", "b": "kb"}, seed, corpus_size)


def test_the_shipped_voice_workload_parses_and_holds_no_secrets():
    workload = load_workload("voice")
    spec = voice_spec(workload)
    assert workload.name == "voice" and all(t.key_env for t in workload.tenants)
    assert (spec.turns.value, spec.utterance_s.min, spec.utterance_s.max) == (3, 3, 10)
    assert (spec.sample_rate, spec.chunk_ms, spec.realtime) == (16_000, 20, True)
    assert spec.corpus is None and spec.server_vad_silence_ms is None
    assert "sk-" not in (WORKLOADS / "voice.yaml").read_text()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"modes": [{"mode": "contemplating", "agents": 2}]}, "voice"),
        ({"modalities": [{"kind": "audio"}]}, "voice"),
        ({"shared_prefix": {"fraction": 0.5, "words": 10}}, "voice"),
        ({"conversation": {}}, "voice"),
        ({"voice": {"utterance_s": {"min": 0, "max": 2}}}, "voice.utterance_s.min"),
        ({"voice": {"utterance_s": {"min": 5, "max": 2}}}, "voice.utterance_s"),
        ({"voice": {"sample_rate": 96_000}}, "voice.sample_rate"),
        ({"voice": {"chunk_ms": 5}}, "voice.chunk_ms"),
        ({"voice": {"server_vad_silence_ms": 20_000}}, "voice.server_vad_silence_ms"),
        ({"voice": {"server_vad_silence_ms": 250}}, "voice"),  # would split synthetic utterances
        ({"voice": {"words": 3}}, "voice.words"),
    ],
)
def test_voice_errors_name_the_key(changes: dict, field: str):
    with pytest.raises(WorkloadError) as e:
        parse_workload({**SMALL, **changes}, source="bad.yaml")
    assert e.value.field == field


def test_a_corpus_allows_any_detection_threshold():
    spec = voice_spec(_workload(voice={"corpus": "clips", "server_vad_silence_ms": 100}))
    assert spec.corpus == "clips" and spec.server_vad_silence_ms == 100


def test_plans_are_seeded_and_within_their_ranges():
    workload = _workload()
    plans = _plans(workload)
    assert plans == _plans(workload) and plans != _plans(workload, seed=8)
    assert _plans(workload, n=10) == plans[:10]  # the first sessions do not depend on how many follow
    turns = [t for p in plans for t in p.turns]
    assert {len(p.turns) for p in plans} == {2, 3, 4}
    assert all(3 <= t.utterance_s <= 10 and 0.5 <= t.think_time_s <= 2.0 for t in turns)
    assert all(t.corpus_index is None for t in turns) and len({t.audio_seed for t in turns}) == len(turns)
    assert all(8 <= p.max_output_tokens <= 32 for p in plans)
    assert {p.tenant for p in plans} == {"a", "b"} and {p.mode.mode for p in plans} == {"instant", "thinking"}
    assert all(p.api_key == {"a": "ka", "b": "kb"}[p.tenant] for p in plans)
    assert all(p.user == ("bob" if p.tenant == "b" else "loadtest") for p in plans)
    assert len({p.system_prompt for p in plans}) == len(plans)  # each session its own
    assert [p.start_s for p in plans] == [0.5 * i for i in range(50)]


def test_corpus_plans_draw_clips_and_speak_them_whole_up_to_the_cap():
    workload = _workload(voice={"corpus": "clips", "utterance_s": {"min": 1, "max": 4}})
    turns = [t for p in _plans(workload, corpus_size=3) for t in p.turns]
    assert {t.corpus_index for t in turns} == {0, 1, 2} and {t.utterance_s for t in turns} == {4.0}
    with pytest.raises(ValueError, match="corpus_size"):
        _plans(workload, corpus_size=0)
    with pytest.raises(ValueError, match="corpus_size"):
        _plans(_workload(), corpus_size=3)


def test_the_session_request_carries_model_mode_sampling_and_system_prompt():
    plan = next(p for p in _plans(_workload()) if p.mode.mode == "thinking")
    request = session_request(plan)
    assert request.model == "muse-tiny" and request.mode.mode == pb.MODE_THINKING
    assert request.mode.thinking_budget == 16 and request.sampling.temperature == 0
    assert request.sampling.max_output_tokens == plan.max_output_tokens
    assert [m.role for m in request.messages] == [pb.ROLE_SYSTEM]
    assert len(request.messages[0].content[0].text.split()) > 12
    bare = session_request(_plans(_workload(voice={}, temperature=None))[0])
    assert list(bare.messages) == [] and not bare.sampling.HasField("temperature")


def test_a_workload_without_a_voice_section_has_no_voice_plan():
    with pytest.raises(ValueError, match="no voice section"):
        plan_sessions(parse_workload({"name": "w"}), [0.0], {})
