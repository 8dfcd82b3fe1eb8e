"""Summary arithmetic, goodput under SLOs and SLO parsing, on hand-made samples."""

from __future__ import annotations

import pytest

from museserve_loadtest.records import CANCELLED, Sample
from museserve_loadtest.stats import meets_slo, parse_slo, percentiles, summarize


def _ok(index: int, scheduled: float, first: float, end: float, out: int = 3, reasoning: int = 0) -> Sample:
    gaps = (end - first) / max(out + reasoning - 1, 1)
    times = [first + k * gaps for k in range(out + reasoning)]
    return Sample(index, scheduled, sent=scheduled, token_times=times, end=end, status="OK", input_tokens=10,
                  output_tokens=out, reasoning_tokens=reasoning)  # fmt: skip


def test_percentiles_of_known_values():
    p = percentiles([float(x) for x in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p90"] == pytest.approx(90.1) and p["p99"] == pytest.approx(99.01)
    assert p["mean"] == pytest.approx(50.5) and p["count"] == 100
    assert percentiles([])["p50"] is None


def test_sample_measures_start_at_the_scheduled_time():
    s = _ok(0, scheduled=1.0, first=1.5, end=2.5, out=3)
    assert s.ttft == pytest.approx(0.5) and s.e2e == pytest.approx(1.5)
    assert s.itls == pytest.approx([0.5, 0.5]) and s.tpot == pytest.approx(0.5)
    assert _ok(1, 0, 0.1, 0.1, out=1).tpot is None  # one token: no time per output token


def test_summary_counts_throughput_goodput_and_errors():
    samples = [
        Sample(0, 0.0, warmup=True, sent=0.0, token_times=[0.1], end=0.2, status="OK", output_tokens=1),
        _ok(1, 1.0, 1.2, 2.0, out=5),  # ttft 0.2, e2e 1.0
        _ok(2, 2.0, 3.0, 3.5, out=5),  # ttft 1.0: breaks ttft=0.5
        _ok(3, 3.0, 3.1, 3.3, out=2, reasoning=3),  # ttft 0.1, e2e 0.3
        Sample(4, 4.0, sent=4.0, end=4.1, status="RESOURCE_EXHAUSTED"),
        Sample(5, 4.5, sent=4.5, end=4.6, status="RESOURCE_EXHAUSTED"),
        Sample(6, 5.0, sent=5.0, end=9.0, status="UNAVAILABLE", retries=3),  # every attempt refused
        Sample(7, 5.5, sent=5.5, end=11.0, status=CANCELLED),
        Sample(8, 6.0, end=11.0, status=CANCELLED),  # never left the client
    ]
    samples[2].retries = 1  # refused once, then served: one OK request
    r = summarize(samples, {"ttft": 0.5}, warmup_s=0.5, dispatch_end_s=10.0, wall_s=11.0)
    req = r["requests"]
    assert req == {"scheduled": 8, "sent": 7, "completed": 6, "ok": 3, "cancelled": 2, "warmup": 1,
                   "errors_by_code": {"RESOURCE_EXHAUSTED": 2, "UNAVAILABLE": 1}, "retries": 4, "retried": 2}  # fmt: skip
    window = 11.0 - 0.5  # from the warm-up's end to the last measured end
    assert r["duration_s"] == pytest.approx(window)
    assert r["throughput"]["requests_per_s"] == pytest.approx(6 / window)
    assert r["throughput"]["output_tokens_per_s"] == pytest.approx(12 / window)
    assert r["throughput"]["input_tokens_per_s"] == pytest.approx(30 / window)
    assert r["goodput"]["requests_per_s"] == pytest.approx(2 / window)
    assert r["goodput"]["fraction"] == pytest.approx(2 / 8)
    assert r["latency_s"]["ttft"]["mean"] == pytest.approx((0.2 + 1.0 + 0.1) / 3)
    assert r["latency_s"]["e2e"]["p50"] == pytest.approx(1.0)
    assert r["tokens"]["reasoning_mean"] == pytest.approx(1.0) and r["tokens"]["output_mean"] == pytest.approx(4.0)
    series = r["timeseries"]
    assert sum(p["sent"] for p in series) == 8 and sum(p["completed"] for p in series) == 7  # warm-up shown
    assert series[1]["ttft_p50"] == pytest.approx(0.2)


def test_goodput_needs_ok_and_every_slo():
    s = _ok(0, 0.0, 0.3, 2.3, out=11)  # ttft 0.3, tpot 0.2, e2e 2.3, max itl 0.2
    assert meets_slo(s, {}) and meets_slo(s, {"ttft": 0.5, "tpot": 0.25, "e2e": 3, "itl": 0.21})
    assert not meets_slo(s, {"ttft": 0.5, "tpot": 0.1})
    assert not meets_slo(s, {"e2e": 2.0})
    assert not meets_slo(Sample(1, 0.0, end=0.1, status="INTERNAL"), {})


def test_parse_slo():
    assert parse_slo(["ttft=2", "TPOT=0.1", "e2e=30"]) == {"ttft": 2.0, "tpot": 0.1, "e2e": 30.0}
    for bad, word in (("ttfb=2", "KEY"), ("ttft", "KEY"), ("ttft=fast", "not a number"), ("e2e=0", "> 0")):
        with pytest.raises(ValueError, match=word):
            parse_slo([bad])
