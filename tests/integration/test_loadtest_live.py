"""museserve-loadtest against the real session app: short, low-rate runs over gRPC and HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from museserve.config import MuseServeConfig
from museserve_loadtest.cli import main
from museserve_loadtest.multiturn import run_conversations_blocking
from museserve_loadtest.workload import SHIPPED_WORKLOADS

from .conftest import REAL_POOL, TEST_KEY

pytestmark = pytest.mark.integration

WORKLOAD = """
name: live-smoke
model: muse-tiny
modes:
  - {mode: instant, weight: 3}
  - {mode: thinking, weight: 1, thinking_budget: 4}
modalities:
  - {kind: text, weight: 3}
  - {kind: image, weight: 1, width: 16, height: 16}
prompt_words: {dist: uniform, min: 4, max: 12}
output_tokens: {dist: fixed, value: 4}
shared_prefix: {fraction: 0.5, count: 1, words: 16}
tenants:
  - {name: tester, key_env: LOADTEST_LIVE_KEY}
"""


def _run(tmp_path: Path, target: str, transport: str, name: str) -> dict:
    workload = tmp_path / "live.yaml"
    workload.write_text(WORKLOAD)
    out = tmp_path / f"{name}.json"
    argv = ["run", "--workload", str(workload), "--target", target, "--transport", transport, "--rate", "4",
            "--duration", "3", "--warmup", "0.5", "--drain-timeout", "20", "--deadline", "20", "--seed", "3",
            "--slo", "ttft=10", "--slo", "e2e=20", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    for suffix in ("latency", "timeseries"):
        with Image.open(tmp_path / f"{name}-{suffix}.png") as png:
            png.verify()
    return report


def _check(report: dict) -> None:
    r = report["requests"]
    assert report["version"] == 1 and r["ok"] > 0 and r["errors_by_code"] == {} and r["cancelled"] == 0
    assert r["ok"] == r["completed"] == r["sent"] == r["scheduled"]
    assert (
        report["latency_s"]["ttft"]["p50"] > 0
        and report["latency_s"]["e2e"]["p99"] >= report["latency_s"]["ttft"]["p99"]
    )
    assert report["tokens"]["output_mean"] == pytest.approx(4, abs=1) and report["tokens"]["input_mean"] > 4
    assert report["goodput"]["fraction"] == 1.0 and report["throughput"]["output_tokens_per_s"] > 0
    assert set(report["config"]) >= {"rate", "arrival", "duration_s", "concurrency", "warmup_s", "slo"}
    assert sum(p["sent"] for p in report["timeseries"]) >= r["scheduled"]


def test_grpc_proxy_and_http_runs(app_config: MuseServeConfig, grpc_address: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LOADTEST_LIVE_KEY", TEST_KEY)
    grpc_report = _run(tmp_path, grpc_address, "grpc", "grpc")
    _check(grpc_report)
    http_report = _run(tmp_path, f"http://127.0.0.1:{app_config.server.http_port}", "http", "http")
    _check(http_report)
    assert main(["compare", str(tmp_path / "grpc.json"), str(tmp_path / "http.json")]) == 0


def test_model_flag_sends_the_workload_to_another_model(grpc_address: str, tmp_path: Path, monkeypatch):
    """The real model serves the text part of the mix when --model names it (its modes and media
    are not muse-tiny's: the mix here is instant text only)."""
    monkeypatch.setenv("LOADTEST_LIVE_KEY", TEST_KEY)
    workload = tmp_path / "text.yaml"
    workload.write_text(WORKLOAD.split("modes:")[0] + TEXT_ONLY)
    out = tmp_path / "real.json"
    argv = ["run", "--workload", str(workload), "--target", grpc_address, "--model", REAL_POOL, "--rate", "2",
            "--duration", "3", "--drain-timeout", "30", "--deadline", "30", "--out", str(out), "--quiet", "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    requests = json.loads(out.read_text())["requests"]
    assert requests["ok"] == requests["sent"] > 0 and requests["errors_by_code"] == {}


TEXT_ONLY = """modes:
  - {mode: instant, weight: 1}
prompt_words: {dist: uniform, min: 4, max: 12}
output_tokens: {dist: fixed, value: 4}
tenants:
  - {name: tester, key_env: LOADTEST_LIVE_KEY}
"""


MULTITURN = """
name: live-multiturn
model: muse-tiny
temperature: 0
output_tokens: {dist: fixed, value: 4}
tenants:
  - {name: first, key_env: LOADTEST_LIVE_KEY}
  - {name: second, key_env: LOADTEST_LIVE_KEY}
conversation:
  turns: {dist: uniform, min: 2, max: 3}
  system_prompt_words: {dist: fixed, value: 64}
  user_words: {dist: uniform, min: 4, max: 8}
  think_time_s: {min: 0.05, max: 0.2}
"""


def test_multiturn_turns_find_their_history_cached(
    app_config: MuseServeConfig, grpc_address: str, tmp_path: Path, monkeypatch
):
    """A few short conversations, over gRPC through the CLI and over HTTP through the API: every
    turn succeeds, and with one replica each later turn finds its history in the prefix cache."""
    monkeypatch.setenv("LOADTEST_LIVE_KEY", TEST_KEY)
    workload = tmp_path / "multiturn.yaml"
    workload.write_text(MULTITURN)
    out = tmp_path / "multiturn.json"
    argv = ["run", "--workload", str(workload), "--target", grpc_address, "--rate", "4", "--duration", "2",
            "--max-requests", "3", "--drain-timeout", "15", "--deadline", "15", "--out", str(out), "--quiet",
            "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    r, c = report["requests"], report["conversations"]
    assert r["ok"] == r["scheduled"] > c["started"] > 0 and r["errors_by_code"] == {} and r["cancelled"] == 0
    assert c["per_turn"]["1"]["ok"] == c["started"] and c["per_turn"]["1"]["cached_token_share"] > 0

    http = f"http://127.0.0.1:{app_config.server.http_port}"
    samples = run_conversations_blocking(http, workload, 4, 2, 1, TEST_KEY, "http",
                                         max_conversations=3, drain_timeout_s=15, salt="over http ")  # fmt: skip
    assert samples and all(s.ok for s in samples) and {s.turn for s in samples} >= {0, 1}
    assert all(s.cached_tokens > 0 for s in samples if s.turn > 0)


def scaled_down(data: dict) -> dict:
    """A shipped workload with the same shape (modes, media kinds, shared prefixes, tenants,
    conversations, its model) and small sizes: short prompts and answers, small media, tiny
    thinking budgets, two agents. Every request then fits the session app's window and media
    limits, and a run takes seconds."""
    data = {
        **data,
        "prompt_words": {"dist": "uniform", "min": 4, "max": 16},
        "output_tokens": {"dist": "fixed", "value": 4},
    }
    small = {"thinking_budget": 8, "agents": 2}
    data["modes"] = [{**m, **{k: v for k, v in small.items() if k in m}} for m in data.get("modes", [])] or [
        {"mode": "instant"}
    ]
    data["modalities"] = [
        {**m, "width": 16, "height": 16, "seconds": 0.25} if m["kind"] != "text" else m
        for m in data.get("modalities", [{"kind": "text"}])
    ]
    if data.get("shared_prefix"):
        data["shared_prefix"] = {**data["shared_prefix"], "words": 32}
    if data.get("conversation"):
        data["conversation"] = {
            "turns": {"dist": "fixed", "value": 2},
            "system_prompt_words": {"dist": "fixed", "value": 32},
            "user_words": {"dist": "fixed", "value": 6},
            "think_time_s": {"min": 0.0, "max": 0.05},
        }
    if data.get("voice"):
        data["voice"] = {
            **data["voice"],
            "turns": {"dist": "fixed", "value": 2},
            "utterance_s": {"min": 0.5, "max": 1.0},
            "think_time_s": {"min": 0.0, "max": 0.05},
            "system_prompt_words": {"dist": "fixed", "value": 8},
        }
    return data


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("shipped", sorted(SHIPPED_WORKLOADS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_workload_runs_without_an_error(
    app_config: MuseServeConfig, grpc_address: str, shipped: Path, transport: str, tmp_path: Path, monkeypatch
):
    """Each shipped workload as it is written (an empty model is the default model, muse-tiny
    here), only smaller and briefer, over either transport (voice: gRPC only): every request
    answered, none sent twice."""
    for variable in ("MUSESERVE_LOADTEST_KEY", "MUSESERVE_LOADTEST_LIMITED_KEY"):  # every tenant unlimited here
        monkeypatch.setenv(variable, TEST_KEY)
    data = yaml.safe_load(shipped.read_text())
    if data.get("voice") and transport == "http":
        pytest.skip("a voice workload is spoken over Converse: gRPC only")
    workload = tmp_path / shipped.name
    workload.write_text(yaml.safe_dump(scaled_down(data)))
    out = tmp_path / "report.json"
    target = f"http://127.0.0.1:{app_config.server.http_port}" if transport == "http" else grpc_address
    argv = ["run", "--workload", str(workload), "--target", target, "--transport", transport, "--rate", "4",
            "--duration", "1", "--max-requests", "3", "--drain-timeout", "30", "--deadline", "30", "--seed", "5",
            "--out", str(out), "--quiet", "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    r = report["requests"]
    assert r["scheduled"] > 0 and r["ok"] == r["completed"] == r["scheduled"], r
    assert r["errors_by_code"] == {} and r["cancelled"] == 0 and r["retries"] == 0
