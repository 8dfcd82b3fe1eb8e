"""Sweeps: the rates to try, and the knee of the latency-throughput curve.

The knee rule: walk the rates from the lowest up. A rate passes when
  (1) its goodput fraction is >= `min_goodput` (default 0.95), and
  (2) its TTFT p99 is <= `max_ttft_growth` (default 3.0) times the TTFT p99 at the lowest rate.
The knee is the last rate of the unbroken run of passing rates from the lowest: a later
rate that passes again after a failure is noise, not capacity. No knee (None) when the
lowest rate already fails: the sweep started too high.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def sweep_rates(rates: str | None = None, start: float | None = None, stop: float | None = None,
                steps: int | None = None) -> list[float]:  # fmt: skip
    """`rates="1,2,4,8"`, or `steps` rates evenly from `start` to `stop` inclusive."""
    if rates:
        out = [float(r) for r in rates.split(",") if r.strip()]
    elif start is not None and stop is not None and steps:
        out = [float(r) for r in np.linspace(start, stop, steps)] if steps > 1 else [float(start)]
    else:
        raise ValueError("give --rates, or --start, --stop and --steps")
    if not out or any(r <= 0 for r in out):
        raise ValueError("sweep rates must be > 0")
    return sorted(out)


def find_knee(runs: Sequence[Mapping], min_goodput: float = 0.95, max_ttft_growth: float = 3.0) -> dict:
    """`runs`: reports sorted or not; returns the knee (rate, index into the sorted order) and
    each rate's verdict, so a reader sees why the knee is where it is."""
    ordered = sorted(runs, key=lambda r: r["config"]["rate"])
    rule = {"min_goodput": min_goodput, "max_ttft_growth": max_ttft_growth}
    if not ordered:
        return {"rate": None, "offered_rps": None, "rule": rule, "verdicts": []}
    base = ordered[0]["latency_s"]["ttft"]["p99"]
    verdicts, knee, broken = [], None, False
    for run in ordered:
        p99 = run["latency_s"]["ttft"]["p99"]
        fraction = run["goodput"]["fraction"]
        reasons = []
        if fraction < min_goodput:
            reasons.append(f"goodput fraction {fraction:.3f} < {min_goodput}")
        if p99 is None:
            reasons.append("no TTFT measured")
        elif base is not None and p99 > max_ttft_growth * base:
            reasons.append(f"TTFT p99 {p99:.3f}s > {max_ttft_growth} x {base:.3f}s")
        passed = not reasons
        verdicts.append({"rate": run["config"]["rate"], "passed": passed, "reasons": reasons})
        broken = broken or not passed
        if passed and not broken:
            knee = run
    return {
        "rate": knee["config"]["rate"] if knee else None,
        "offered_rps": knee["offered_rps"] if knee else None,
        "goodput_rps": knee["goodput"]["requests_per_s"] if knee else None,
        "rule": rule,
        "verdicts": verdicts,
    }
