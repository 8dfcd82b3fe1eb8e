"""Reading per-replica figures from bench and sweep files, and how measured and assumed figures merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from museserve_loadtest import capacity_sources as sources
from museserve_loadtest.capacity_figures import MissingFigure, assumed, load_profile, measured, merge, parse_assume


def engine_doc() -> dict:
    return {
        "device": "cpu",
        "model": {"source": "dummy small"},
        "ours": {"output_tokens_per_s": 1000.0, "step_s_p50": 0.1},
        # prefill: 2,000 tokens / median(0.3, 0.4, 0.5) = 5,000 tokens/s
        "prefix_cache": {"prompt_tokens": 2000, "cold_turn_ttft_s": [0.5, 0.3, 0.4]},
    }


def sweep_doc() -> dict:
    def run(rate: float, output: float) -> dict:
        return {"config": {"rate": rate}, "tokens": {"output_mean": output, "reasoning_mean": 50.0}}

    # the knee at 4 req/s, 8 good req/s over 2 replicas, 200 + 50 decode tokens per request
    knee = {"rate": 4.0, "offered_rps": 4.0, "goodput_rps": 8.0, "rule": {}, "verdicts": []}
    return {"version": 1, "kind": "sweep", "rates": [2.0, 4.0, 8.0],
            "runs": [run(2.0, 10.0), run(4.0, 200.0), run(8.0, 10.0)], "knee": knee}  # fmt: skip


def gateway_doc() -> dict:
    return {
        "redis_admission_decisions_per_request": 1.0,
        "redis_settlements_per_request": 0.0,
        "redis_commands_sent_by_clients": {"evalsha": 400},
        "redis_commands_inside_scripts": {"get": 1600, "set": 1600, "time": 400},
    }


def write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def by_name(figures) -> dict:
    return {f.name: f for f in figures}


def test_engine_figures_name_file_and_key(tmp_path):
    path = write(tmp_path, "engine.json", engine_doc())
    found = by_name(sources.from_engine(path))
    assert found["decode_tokens_per_s_per_replica"].value == 1000.0
    assert found["decode_step_s"].value == 0.1
    assert found["prefill_tokens_per_s_per_replica"].value == pytest.approx(5000.0)
    for f in found.values():
        assert f.kind == "measured" and f.source.startswith(f"{path}: ") and "dummy small on cpu" in f.source


def test_sweep_knee_per_replica(tmp_path):
    path = write(tmp_path, "sweep.json", sweep_doc())
    (f,) = sources.from_sweep(path, replicas=2)
    assert f.name == "decode_tokens_per_s_per_replica"
    assert f.value == pytest.approx(8.0 * 250.0 / 2)  # the knee's run, not its neighbours
    assert "knee.goodput_rps" in f.source and "2 replicas" in f.source


def test_sweep_without_a_knee_is_refused(tmp_path):
    doc = sweep_doc()
    doc["knee"] = {"rate": None, "offered_rps": None, "goodput_rps": None}
    with pytest.raises(ValueError, match="knee.rate is null: the lowest rate already failed"):
        sources.from_sweep(write(tmp_path, "sweep.json", doc), replicas=1)
    with pytest.raises(ValueError, match="not a sweep report"):
        sources.from_sweep(write(tmp_path, "run.json", {"requests": {}}), replicas=1)


def test_hit_rate_agents_and_redis_figures(tmp_path):
    routing = sources.from_prefix_routing(write(tmp_path, "p.json", {"cached_token_share": {"prefix": 0.84}}))
    answers = sources.from_answers(write(tmp_path, "a.json", {"n4_prefill_ratio": 0.25}))
    gateway = by_name(sources.from_gateway(write(tmp_path, "g.json", gateway_doc())))
    assert [f.value for f in routing + answers] == [0.84, 0.25]
    assert gateway["redis_decisions_per_request"].value == 1.0
    assert gateway["redis_keys_per_decision"].value == 4.0  # 1,600 GETs over 400 scripts


def test_a_file_missing_its_key_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"e.json: lacks ours.output_tokens_per_s"):
        sources.from_engine(write(tmp_path, "e.json", {"prefix_cache": engine_doc()["prefix_cache"]}))


def test_measurement_beats_profile_unless_it_says_replaces_measured():
    m = measured("prefix_hit_rate", 0.84, "p.json", "cached_token_share.prefix")
    fallback = assumed("prefix_hit_rate", 0.5, "guess")
    f = merge([m], [fallback])
    assert f.get("prefix_hit_rate") == 0.84 and f.used["prefix_hit_rate"].kind == "measured"
    over = assumed("prefix_hit_rate", 0.5, "GPU run differs", over_measured=True)
    f = merge([m], [over])
    assert f.get("prefix_hit_rate") == 0.5
    assert f.used["prefix_hit_rate"].replaces == "measured 0.84 at p.json: cached_token_share.prefix"
    f = merge([m], [fallback], [parse_assume("prefix_hit_rate=0.3:stated on the command line")])
    assert f.get("prefix_hit_rate") == 0.3 and f.used["prefix_hit_rate"].source == "stated on the command line"


def test_missing_figure_names_it_and_unused_ones_are_not_reported():
    f = merge([], [assumed("users", 10, "stated"), assumed("vocab_size", 32000, "tokenizer")])
    assert f.get("users") == 10
    with pytest.raises(MissingFigure, match="decode_step_s: neither measured nor assumed"):
        f.get("decode_step_s")
    assert list(f.used) == ["users"]


def test_profile_and_assume_parsing(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("users: {value: 3.3e9, reason: stated}\nmode_mix: {value: {instant: 1}, reason: stated}\n")
    users, mix = load_profile(path)
    assert users.value == 3.3e9 and users.kind == "assumed"  # YAML reads 3.3e9 as a string
    assert mix.value == {"instant": 1}
    assert parse_assume("mode_mix=instant/0.7+thinking/0.3:stated").value == {"instant": 0.7, "thinking": 0.3}
    assert parse_assume("model_size=70b:planned").value == "70b"
    for bad, message in (
        ("users: {value: 3}", "expected {value: ..., reason: ...}"),
        ("users: {value: 3, reason: ''}", "needs its reason"),
        ("user_count: {value: 3, reason: x}", "not a figure of the plan"),
        ("users: {value: 3, reason: x, default: 2}", "unknown key default"),
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match=message):
            load_profile(path)
    with pytest.raises(ValueError, match="expected NAME=VALUE:REASON"):
        parse_assume("users=3")
