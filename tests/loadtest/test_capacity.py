"""The capacity plan against hand-computed cases: KV- and compute-bound replicas, prefill and
decode, pools, cells, gateways, Redis and the mirror stream; and the `capacity` command."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from museserve.model.config import MuseConfig
from museserve_loadtest.capacity import plan
from museserve_loadtest.capacity_figures import Figures, MissingFigure, assumed
from museserve_loadtest.capacity_layout import GIB, suggest_layout
from museserve_loadtest.cli import main

from .test_capacity_sources import engine_doc, gateway_doc, sweep_doc, write

# 1b: 16 layers x 8 KV heads x 64 x 2 (K, V) x 2 bytes = 32,768 bytes/token; 1,038,682,112 parameters
# = 1.935 GiB of bfloat16 weights. 10 GiB at utilisation 1 leaves 8.065 GiB of KV cache; the mix's
# mean context is 2,048 tokens = 64 MiB, so 129 sequences fit.
BASE = {
    "users": 8_640_000,  # x 1 active x 10 req/day / 86,400 = 1,000 req/s; x 2 = 2,000 at peak
    "daily_active_fraction": 1.0,
    "requests_per_active_user_per_day": 10,
    "peak_to_average": 2.0,
    "mode_mix": {"instant": 1.0},
    "context_mix": {"1024": 0.5, "3072": 0.5},
    "prompt_tokens": 1000,
    "output_tokens": 100,
    "model_size": "1b",
    "vocab_size": 32000,
    "weight_bytes_per_parameter": 2,
    "kv_element_bytes": 2,
    "tensor_parallel": 1,
    "pipeline_parallel": 1,
    "gpu_memory_gib": 10,
    "gpu_memory_utilisation": 1.0,
    "decode_tokens_per_s_per_replica": 1000,
    "decode_step_s": 0.1,  # 100 sequences per step: fewer than the 129 that fit -> compute-bound
    "prefill_tokens_per_s_per_replica": 5000,
    "prefix_hit_rate": 0.5,
    "target_utilisation": 0.8,
    "max_gpus_per_cell": 128,
    "gateway_rps_per_replica": 100,
    "redis_decisions_per_request": 1,
    "redis_keys_per_decision": 4,
    "redis_ops_per_s_per_shard": 1000,
    "redis_replication_factor": 2,
    "mirror_fraction": 0.0,
}


def figures(**changes) -> Figures:
    values = {**BASE, **changes}
    return Figures(assumed(k, v, "test") for k, v in values.items() if v is not None)


def test_compute_bound_plan_by_hand():
    c = plan(figures())
    m = c.replica.memory
    assert m.kv_bytes_per_token == 32_768 and m.mean_context_tokens == 2048
    assert m.kv_sequences == 129 and c.replica.bound == "compute" and c.replica.decode_tokens_per_s == 1000
    assert (c.average_requests_per_s, c.peak_requests_per_s) == (pytest.approx(1000), pytest.approx(2000))
    (p,) = c.pools
    # prefill 1,000 x (1 - 0.5) = 500 tokens / 5,000 = 0.1 s; decode 100 / 1,000 = 0.1 s
    assert (p.prefill_tokens_per_request, p.replica_s_per_request, p.prefill_share) == (500, 0.2, 0.5)
    # 2,000 req/s x 0.2 s = 400 busy replicas / 0.8 = 500
    assert (p.replicas, c.replicas, c.gpus) == (500, 500, 500)
    # 128 replicas per cell -> 4 cells; each 500 req/s / (100 x 0.8) = 6.25 -> 7 gateways
    assert (c.replicas_per_cell, c.cells, c.gateway_replicas_per_cell, c.gateway_replicas) == (128, 4, 7, 28)
    # Redis: 2,000 decisions/s x 4 keys; each cell 500/s / (1,000 x 0.8) -> 1 shard, 4 in all, 8 nodes
    assert (c.redis_ops_per_s, c.redis_keys_per_s) == (pytest.approx(2000), pytest.approx(8000))
    assert (c.redis_shards_per_cell, c.redis_shards, c.redis_nodes) == (1, 4, 8)
    assert (c.mirror_records_per_s, c.mirror_bytes_per_s) == (0, 0)


def test_kv_bound_replica_decodes_slower():
    c = plan(figures(decode_step_s=0.2))  # 200 sequences per step, but 129 fit
    assert c.replica.bound == "KV" and c.replica.compute_sequences == pytest.approx(200)
    assert c.replica.decode_tokens_per_s == pytest.approx(1000 * 129 / 200)  # 645
    # 0.1 s prefill + 100 / 645 s decode = 0.25504 s; x 2,000 / 0.8 = 637.6 -> 638
    assert c.replicas == 638
    # a longer context mix makes a compute-bound replica KV-bound
    long = plan(figures(context_mix={"8192": 1.0}))  # 256 MiB each: 32 fit
    assert long.replica.memory.kv_sequences == 32 and long.replica.bound == "KV"


def test_modes_prefill_and_decode():
    f = figures(
        mode_mix={"thinking": 0.5, "contemplating": 0.5},
        reasoning_tokens=200,
        contemplating_agents=4,
        agent_answer_tokens=50,
        synthesis_reasoning_tokens=20,
        agents_prefill_ratio=0.25,
    )
    pools = {p.pool: p for p in plan(f).pools}
    assert (pools["thinking"].prefill_tokens_per_request, pools["thinking"].decode_tokens_per_request) == (500, 300)
    # 4 agents x 500 x 0.25 + 4 x 50 = 700 prefill; 4 x (200 + 50) + 20 + 100 = 1,120 decode
    c = pools["contemplating"]
    assert (c.prefill_tokens_per_request, c.decode_tokens_per_request) == (700, 1120)
    # 1,000 req/s x (700 / 5,000 + 1,120 / 1,000 = 1.26 s) / 0.8 = 1,575 replicas
    assert c.replicas == 1575


def test_mirror_pool_and_stream():
    c = plan(figures(mirror_fraction=0.1, mirror_record_bytes=1000))
    # the candidate serves 10% of the 400 busy replicas: 40 / 0.8 = 50
    assert [p.pool for p in c.pools] == ["instant", "mirror"] and c.pools[1].replicas == 50
    assert (c.mirror_records_per_s, c.mirror_bytes_per_s) == (pytest.approx(200), pytest.approx(200_000))


def test_monotonic_in_users():
    counts = [plan(figures(users=u)) for u in (1e5, 1e6, 8.64e6, 1e8, 3.3e9)]
    for key in ("replicas", "gpus", "cells", "gateway_replicas", "redis_shards"):
        values = [getattr(c, key) for c in counts]
        assert values == sorted(values), key


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"decode_step_s": None}, "decode_step_s: neither measured nor assumed"),
        ({"mode_mix": {"thinking": 1.0}}, "reasoning_tokens: neither measured nor assumed"),
        ({"mirror_fraction": 0.1}, "mirror_record_bytes: neither measured nor assumed"),
        ({"mode_mix": {"instant": 0.5}}, "mode_mix: shares of"),
        ({"context_mix": {"1048576": 1.0}}, "context_mix: 1,048,576 tokens need 32.0 GiB"),
        ({"gpu_memory_gib": 1.9}, "1 GPUs of 1.9 GiB at 1 hold no KV cache beside 1.9 GiB of weights"),
        ({"tensor_parallel": 3}, "tensor_parallel x pipeline_parallel: parallel.tensor (3) must divide"),
        ({"max_gpus_per_cell": 0}, "max_gpus_per_cell: 0 GPUs hold no 1-GPU replica"),
        ({"prefix_hit_rate": 1.5}, "prefix_hit_rate: a share"),
    ],
)
def test_errors_name_the_figure(changes, message):
    with pytest.raises((MissingFigure, ValueError), match=re.escape(message)):
        plan(figures(**changes))


def test_layout_per_model_size():
    usable = 79.6 * GIB * 0.9
    layout = suggest_layout(MuseConfig.named("70b", 128256), "70b", 2, usable)
    assert (layout.tensor_parallel, layout.pipeline_parallel) == (4, 1)  # 131 GiB / 4 <= 35.8 GiB
    big = suggest_layout(MuseConfig.named("70b", 128256), "70b", 4, usable)  # float32: 263 GiB
    assert (big.tensor_parallel, big.pipeline_parallel) == (8, 1)
    tiny_gpus = suggest_layout(MuseConfig.named("70b", 128256), "70b", 2, 16 * GIB)
    assert (tiny_gpus.tensor_parallel, tiny_gpus.pipeline_parallel) == (8, 3)  # 16.4 GiB per rank over 8


def test_command_marks_measured_and_assumed(tmp_path, capsys):
    engine = write(tmp_path, "engine.json", engine_doc())
    sweep = write(tmp_path, "sweep.json", sweep_doc())
    gateway = write(tmp_path, "gateway.json", gateway_doc())
    measured_here = {"decode_tokens_per_s_per_replica", "decode_step_s", "prefill_tokens_per_s_per_replica",
                     "redis_decisions_per_request", "redis_keys_per_decision"}  # fmt: skip
    profile = {k: {"value": v, "reason": "stated for the test"} for k, v in BASE.items() if k not in measured_here}
    profile["decode_step_s"] = {"value": 0.05, "reason": "GPU figure", "replaces_measured": True}
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    out = tmp_path / "plan.json"
    argv = ["capacity", "--profile", str(tmp_path / "profile.yaml"), "--engine", str(engine), "--sweep", str(sweep),
            "--sweep-replicas", "2", "--gateway", str(gateway), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    fig = doc["figures"]
    assert fig["decode_tokens_per_s_per_replica"]["kind"] == "measured"
    assert "sweep.json: knee.goodput_rps" in fig["decode_tokens_per_s_per_replica"]["source"]
    assert fig["prefill_tokens_per_s_per_replica"]["source"].endswith("(dummy small on cpu)")
    assert fig["decode_step_s"] == {"value": 0.05, "kind": "assumed", "source": "GPU figure",
                                    "replaces": f"measured 0.1 at {engine}: ours.step_s_p50 (dummy small on cpu)"}  # fmt: skip
    assert fig["users"] == {"value": 8_640_000, "kind": "assumed", "source": "stated for the test"}
    assert "mirror_record_bytes" not in fig  # mirror_fraction 0: not used, not listed
    assert doc["plan"]["replicas"] == 500 and [lay["model_size"] for lay in doc["layouts"]][-1] == "70b"
    for name in fig:
        assert name in text
    assert "replicas 500, GPUs 500" in text and "compute-bound" in text


def test_command_refuses_a_missing_figure(tmp_path, capsys):
    profile = {k: {"value": v, "reason": "stated"} for k, v in BASE.items() if k != "prefill_tokens_per_s_per_replica"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    assert main(["capacity", "--profile", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "capacity: prefill_tokens_per_s_per_replica: neither measured nor assumed" in err
    assert main(["capacity", "--sweep", "s.json"]) == 2
    assert "sweep_replicas: --sweep needs --sweep-replicas" in capsys.readouterr().err


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"users": 0}, "users: must be a finite number > 0"),
        ({"daily_active_fraction": 0}, "daily_active_fraction x users (requests/s): must be"),
        ({"mode_mix": {"instant": 1.5, "thinking": -0.5}}, "mode_mix: shares of"),
    ],
)
def test_no_traffic_or_a_negative_share_is_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan(figures(**changes))
