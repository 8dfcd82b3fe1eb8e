"""compare, knee finding, the SSE chunk parser and the CLI's compare and argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from museserve_loadtest.cli import main
from museserve_loadtest.compare import compare_reports
from museserve_loadtest.http_transport import record_chunk
from museserve_loadtest.records import Sample
from museserve_loadtest.sweep import find_knee, sweep_rates


def _report(rate: float, fraction: float, p99: float | None, ok: int = 10) -> dict:
    ttft = {"p50": None if p99 is None else p99 / 2, "p90": None, "p99": p99, "mean": None}
    return {
        "version": 1, "config": {"rate": rate}, "offered_rps": rate,
        "requests": {"ok": ok, "cancelled": 0, "errors_by_code": {"UNAVAILABLE": 1}},
        "latency_s": {"ttft": ttft}, "throughput": {"requests_per_s": rate, "output_tokens_per_s": 10 * rate},
        "goodput": {"requests_per_s": rate * fraction, "fraction": fraction},
    }  # fmt: skip


def test_compare_gives_absolute_and_percent_deltas(tmp_path: Path, capsys):
    rows = {r[0]: r for r in compare_reports(_report(2, 1.0, 0.2), _report(4, 0.5, 0.3, ok=12))}
    _, a, b, delta, pct = rows["ttft p99 (ms)"]
    assert (a, b) == pytest.approx((200, 300)) and delta == pytest.approx(100) and pct == pytest.approx(50)
    assert rows["goodput fraction"][3:] == pytest.approx((-0.5, -50))
    assert rows["ok"][3:] == pytest.approx((2, 20))
    assert rows["itl p50 (ms)"][1:] == (None, None, None, None)  # missing in both: shown as -
    a_path, b_path = tmp_path / "a.json", tmp_path / "b.json"
    a_path.write_text(json.dumps(_report(2, 1.0, 0.2)))
    b_path.write_text(json.dumps(_report(4, 0.5, 0.3)))
    assert main(["compare", str(a_path), str(b_path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("ttft p99"))
    assert "200.0" in line and "300.0" in line and "+100.0" in line and "+50.0%" in line


def test_knee_is_the_last_of_the_unbroken_passing_rates():
    runs = [_report(8, 0.99, 0.5), _report(1, 1.0, 0.2), _report(2, 1.0, 0.25), _report(4, 0.97, 0.55),
            _report(16, 0.99, 0.3)]  # fmt: skip
    knee = find_knee(runs, min_goodput=0.95, max_ttft_growth=2.0)
    assert knee["rate"] == 2  # 4: TTFT p99 grew 2.75x; 16 passes again but after a failure
    verdicts = {v["rate"]: v for v in knee["verdicts"]}
    assert [v["rate"] for v in knee["verdicts"]] == [1, 2, 4, 8, 16]
    assert not verdicts[4]["passed"] and "TTFT p99" in verdicts[4]["reasons"][0] and verdicts[16]["passed"]
    assert find_knee(runs, max_ttft_growth=10)["rate"] == 16
    low_goodput = find_knee([_report(1, 0.9, 0.2), _report(2, 1.0, 0.2)])
    assert low_goodput["rate"] is None and "goodput" in low_goodput["verdicts"][0]["reasons"][0]


def test_sweep_rates():
    assert sweep_rates("4,1, 2") == [1, 2, 4]
    assert sweep_rates(start=1, stop=4, steps=4) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        sweep_rates()


def test_sse_chunks_fill_the_sample():
    s = Sample(0, 0.0)
    record_chunk({"choices": [{"delta": {"role": "assistant"}}]}, s, 0.1)
    record_chunk({"choices": [{"delta": {"reasoning_content": "hm"}}]}, s, 0.2)
    record_chunk({"choices": [{"delta": {"content": "hi"}}]}, s, 0.3)
    usage = {"prompt_tokens": 7, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 2}}
    record_chunk({"choices": [], "usage": usage}, s, 0.4)
    assert s.token_times == [0.2, 0.3] and (s.input_tokens, s.output_tokens, s.reasoning_tokens) == (7, 3, 2)
    record_chunk({"error": {"message": "gone", "code": "unavailable"}}, s, 0.5)
    assert s.status == "STREAM_unavailable" and not s.ok


def test_cli_refuses_bad_arguments_with_a_message(tmp_path: Path, capsys):
    workload = Path(__file__).resolve().parents[2] / "loadtest" / "workloads" / "chat.yaml"
    common = ["run", "--workload", str(workload), "--rate", "1", "--duration", "1", "--out", str(tmp_path / "r.json")]
    assert main([*common, "--target", "staging.example.com:443"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main([*common, "--slo", "ttfb=1"]) == 2
    assert "--slo" in capsys.readouterr().err
