"""The capacity model against hand-computed cases, the run-report reader, flag errors and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from museserve_loadtest.capacity import Assumptions, plan
from museserve_loadtest.capacity_assumptions import Fleet, Services, Traffic, Workload
from museserve_loadtest.capacity_report import measured_from_run
from museserve_loadtest.cli import main

TEXT_ONLY = {"text": 1.0, "image": 0.0, "audio": 0.0}
INSTANT_ONLY = {"instant": 1.0, "thinking": 0.0, "contemplating": 0.0}


def base(**workload) -> Assumptions:
    """Instant, text only, no mirror: the target request costs what the measured one did (256 decode, 512 prompt)."""
    mix = {"mode_mix": INSTANT_ONLY, "modality_mix": TEXT_ONLY, **workload}
    return Assumptions(workload=Workload(**mix), services=Services(mirror_fraction=0.0))


def test_brief_case_users_to_cells():
    c = plan(base())
    # 3.3e9 users x 0.3 DAU x 10 req/day = 9.9e9 req/day; / 86,400 = 114,583.33 req/s; x 3 peak = 343,750 req/s
    assert c.average_requests_per_s == pytest.approx(114_583.333, rel=1e-6)
    assert c.peak_requests_per_s == pytest.approx(343_750)
    # tokens: 114,583.33 x 512 = 58,666,667 in/s; x 256 = 29,333,333 decode/s on average
    assert c.average_input_tokens_per_s == pytest.approx(58_666_666.7, rel=1e-6)
    assert c.average_decode_tokens_per_s == pytest.approx(29_333_333.3, rel=1e-6)
    # K = 2.0 rps x (512/2 + 0.05 x 512) = 2 x 281.6 = 563.2; each request costs 281.6
    # 343,750 x 281.6 / 563.2 = 171,875 replica-equivalents; / 0.7 = 245,535.7 -> 245,536 replicas
    assert c.replica_budget_cost_per_s == pytest.approx(563.2)
    assert [p.pool for p in c.pools] == ["instant"]
    assert c.pools[0].replica_equivalents == pytest.approx(171_875)
    assert c.replicas == 245_536
    # tp 8 x pp 1 = 8 GPUs each -> 1,964,288 GPUs; 8 GPUs/node -> 245,536 nodes; / 2,000 = 122.8 -> 123 cells
    assert (c.gpus, c.nodes, c.nodes_per_cell, c.cells) == (1_964_288, 245_536, 2_000, 123)
    # gateways: 343,750 / (500 x 0.7 = 350) = 982.1 -> 983
    assert c.gateway_replicas == 983
    # Redis: 343,750 x 1 decision = 343,750 ops/s; / (25,000 x 0.7 = 17,500) = 19.6 -> 20 shards; x 2 copies = 40
    assert (c.redis_ops_per_s, c.redis_shards, c.redis_nodes) == (pytest.approx(343_750), 20, 40)
    assert (c.media_preprocess_cpu_s_per_s, c.preprocess_replicas) == (0.0, 0)


def test_mode_mix_costs_reasoning_and_agents():
    c = plan(base(mode_mix={"instant": 0.7, "thinking": 0.25, "contemplating": 0.05}))
    pools = {p.pool: p for p in c.pools}
    # instant: 256 decode + 0.05 x 512 = 281.6; 240,625 req/s x 281.6 / 563.2 = 120,312.5; / 0.7 = 171,875
    assert pools["instant"].cost_per_request == pytest.approx(281.6)
    assert pools["instant"].replicas == 171_875
    # thinking: 1,024 + 256 = 1,280 decode, cost 1,305.6; 85,937.5 x 1,305.6 / 563.2 = 199,218.75; / 0.7 -> 284,599
    assert pools["thinking"].decode_tokens_per_request == 1_280
    assert pools["thinking"].replicas == 284_599
    # contemplating: 4 x (1,024 + 256) + 128 + 256 = 5,504 decode; prefill 512 + 4 x 256 = 1,536 -> 76.8;
    # cost 5,580.8; 17,187.5 x 5,580.8 / 563.2 = 170,312.5; / 0.7 = 243,303.6 -> 243,304
    assert pools["contemplating"].decode_tokens_per_request == 5_504
    assert pools["contemplating"].prefill_tokens_per_request == 1_536
    assert pools["contemplating"].replicas == 243_304
    assert c.replicas == 171_875 + 284_599 + 243_304  # 699,778


def test_modality_mix_adds_prompt_tokens_and_preprocess():
    c = plan(base(modality_mix={"text": 0.9, "image": 0.1, "audio": 0.0}))
    # prompt 512 + 0.1 x 1,024 = 614.4; cost 256 + 0.05 x 614.4 = 286.72
    # 343,750 x 286.72 / 563.2 = 175,000; / 0.7 = 250,000 replicas
    assert c.pools[0].cost_per_request == pytest.approx(286.72)
    assert c.replicas == 250_000
    # images: 343,750 x 0.1 x 15.9 ms = 546.56 CPU-s/s; / 0.7 = 780.8 -> 781 preprocess replicas
    assert c.media_preprocess_cpu_s_per_s == pytest.approx(546.5625)
    assert c.preprocess_replicas == 781
    audio = plan(base(modality_mix={"text": 0.9, "image": 0.0, "audio": 0.1}))
    # clips: 343,750 x 0.1 x 17.7 ms = 608.44 CPU-s/s; / 0.7 = 869.2 -> 870
    assert audio.preprocess_replicas == 870


def test_mirror_pool_and_its_redis_writes():
    a = dataclasses.replace(base(), services=Services(mirror_fraction=0.01))
    c = plan(a)
    # mirror: 0.01 x 171,875 = 1,718.75 replica-equivalents; / 0.7 = 2,455.4 -> 2,456
    assert c.pools[-1].pool == "mirror" and c.pools[-1].replicas == 2_456
    assert c.replicas == 245_536 + 2_456
    # Redis: 343,750 x (1 + 0.01 x 1 XADD) = 347,187.5 ops/s; / 17,500 = 19.8 -> 20
    assert c.redis_ops_per_s == pytest.approx(347_187.5)
    assert c.redis_shards == 20


@pytest.mark.parametrize(
    "fleet, gpus, nodes, cells",
    [
        # tp 16 on 8-GPU nodes: 2 nodes per replica -> 491,072 nodes; / 2,000 = 245.5 -> 246 cells
        (Fleet(tensor_parallel=16), 3_928_576, 491_072, 246),
        # tp 2: 4 replicas per node -> 245,536 / 4 = 61,384 nodes; / 2,000 = 30.7 -> 31 cells
        (Fleet(tensor_parallel=2), 491_072, 61_384, 31),
        # at most 4,096 GPUs per cell = 512 nodes; 245,536 / 512 = 479.6 -> 480 cells
        (Fleet(max_gpus_per_cell=4_096), 1_964_288, 245_536, 480),
    ],
)
def test_packing_into_nodes_and_cells(fleet, gpus, nodes, cells):
    c = plan(dataclasses.replace(base(), fleet=fleet))
    assert (c.gpus, c.nodes, c.cells) == (gpus, nodes, cells)


def run_report(goodput_rps: float = 12.0, ok: int = 600) -> dict:
    return {
        "requests": {"ok": ok},
        "goodput": {"requests_per_s": goodput_rps, "slo": {"ttft": 1.0}},
        "throughput": {"output_tokens_per_s": 2_600.0},
        "tokens": {"input_mean": 512.0, "output_mean": 200.0, "reasoning_mean": 56.0},
    }


def test_measurement_from_a_run_report(tmp_path, capsys):
    m = measured_from_run(run_report(), replicas=4)
    # G = 12 / 4 = 3 rps per replica; decode 200 + 56 = 256 per request -> 768 tokens/s per replica
    assert (m.goodput_rps_per_replica, m.tokens_per_s_per_replica, m.measured_prompt_tokens) == (3.0, 768.0, 512.0)
    assert '"ttft": 1.0' in m.source
    # K = 3 x 281.6 = 844.8; 343,750 / 3 = 114,583.3 replica-equivalents; / 0.7 = 163,690.5 -> 163,691
    assert plan(dataclasses.replace(base(), measured=m)).replicas == 163_691
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run_report()))
    mix = ["--mode-mix", "instant=1", "--modality-mix", "text=1", "--mirror-fraction", "0"]
    assert main(["capacity", "--from-run", str(path), "--replicas", "4", *mix]) == 0
    assert "163,691" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--users", "-5"], "users: must be a finite number >= 0"),
        (["--mode-mix", "instant=0.5,thinking=0.4"], "mode_mix: shares sum to 0.9, must sum to 1"),
        (["--modality-mix", "text=0.5,video=0.5"], "modality_mix: unknown video"),
        (["--target-utilisation", "1.5"], "target_utilisation: a fraction, must be <= 1"),
        (["--goodput-rps-per-replica", "0"], "goodput_rps_per_replica: must be > 0"),
        (["--tensor-parallel", "0"], "tensor_parallel: must be >= 1"),
        (["--from-run", "run.json"], "replicas: --from-run needs --replicas"),
        (["--from-run", "run.json", "--replicas", "2", "--goodput-rps-per-replica", "3"], "give either --from-run"),
    ],
)
def test_bad_flags_name_the_field(flags, message, capsys):
    assert main(["capacity", *flags]) == 2
    assert message in capsys.readouterr().err


def test_run_reports_without_a_measurement_are_refused():
    with pytest.raises(ValueError, match="no request within its SLO"):
        measured_from_run(run_report(goodput_rps=0.0, ok=0), replicas=1)
    with pytest.raises(ValueError, match="lacks a number at 'tokens'"):
        measured_from_run({"goodput": {"requests_per_s": 1.0}}, replicas=1)


def test_cli_prints_every_assumption_and_writes_json(tmp_path, capsys):
    out = tmp_path / "capacity.json"
    assert main(["capacity", "--users", "1e6", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assumptions = Assumptions(traffic=Traffic(users=1e6))
    assert doc["assumptions"] == json.loads(json.dumps(dataclasses.asdict(assumptions)))
    assert doc["capacity"] == json.loads(json.dumps(plan(assumptions).to_json()))
    for section, fields in doc["assumptions"].items():
        for name in fields:
            assert f"{section}.{name} " in table
    assert "1,000,000" in table and "placeholder" in table
    for key in doc["capacity"]:
        assert key in table or key == "pools"
