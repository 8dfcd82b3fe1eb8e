"""Summaries of a run: percentiles, throughput, goodput under SLOs, errors, a per-second series.

Rules (they define the report's numbers):
- Only measured requests count: those scheduled at or after the warm-up.
- `completed` = finished with a status from the server (OK or error); `cancelled` = stopped
  by the hard stop; `sent` = left the client (passed the concurrency cap). A request sent
  again after a failure before any output is one request: `retries` counts the extra
  attempts, `retried` the requests that needed any, and its status is its last attempt's.
- TTFT/ITL/TPOT/e2e percentiles are over OK requests; ITL pools every gap of every request.
- Throughput divides by the measured window: from the end of warm-up to the later of the
  last dispatch and the last measured completion.
- Goodput: OK requests within every SLO given (a missing measure, such as TPOT of a
  one-token answer, passes that SLO), per second of the window, and as a fraction of
  the measured scheduled requests (so cancelled and failed requests count against it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from .records import Sample

SLO_KEYS = ("ttft", "itl", "tpot", "e2e")


def parse_slo(items: Sequence[str]) -> dict[str, float]:
    """`["ttft=2", "tpot=0.1"]` -> {"ttft": 2.0, "tpot": 0.1}; seconds."""
    slo: dict[str, float] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in SLO_KEYS:
            raise ValueError(f"--slo {item!r}: expected KEY=SECONDS with KEY one of {', '.join(SLO_KEYS)}")
        try:
            slo[key] = float(value)
        except ValueError:
            raise ValueError(f"--slo {item!r}: {value!r} is not a number of seconds") from None
        if slo[key] <= 0:
            raise ValueError(f"--slo {item!r}: must be > 0")
    return slo


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if len(values) == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "count": 0}
    a = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()), "count": int(a.size)}


def meets_slo(sample: Sample, slo: Mapping[str, float]) -> bool:
    if not sample.ok:
        return False
    measures = {"ttft": sample.ttft, "tpot": sample.tpot, "e2e": sample.e2e, "itl": max(sample.itls, default=None)}
    return all(measures[k] is None or measures[k] <= limit for k, limit in slo.items())


def _mean(values: Sequence[int]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def timeseries(samples: Sequence[Sample], bucket_s: float = 1.0) -> list[dict]:
    """Per bucket of run time (warm-up included, so it shows): sends, completions, the median
    TTFT of requests whose first token came in the bucket, and output tokens completed."""
    horizon = max([s.end or 0.0 for s in samples] + [s.scheduled for s in samples] + [0.0])
    n = int(horizon // bucket_s) + 1
    sent, done, out = [0] * n, [0] * n, [0] * n
    ttfts: list[list[float]] = [[] for _ in range(n)]
    for s in samples:
        if s.sent is not None:
            sent[int(s.sent // bucket_s)] += 1
        if s.end is not None and s.status is not None and not s.cancelled:
            done[int(s.end // bucket_s)] += 1
            out[int(s.end // bucket_s)] += s.output_tokens
        if s.ok and s.token_times:
            ttfts[int(s.token_times[0] // bucket_s)].append(s.ttft)
    return [
        {"t": i * bucket_s, "sent": sent[i], "completed": done[i], "output_tokens": out[i],
         "ttft_p50": float(np.median(ttfts[i])) if ttfts[i] else None}
        for i in range(n)
    ]  # fmt: skip


def summarize(
    samples: Sequence[Sample], slo: Mapping[str, float], warmup_s: float, dispatch_end_s: float, wall_s: float
) -> dict:
    measured = [s for s in samples if not s.warmup]
    ok = [s for s in measured if s.ok]
    cancelled = [s for s in measured if s.cancelled]
    completed = [s for s in measured if s.status is not None and not s.cancelled]
    last_end = max((s.end for s in measured if s.end is not None), default=dispatch_end_s)
    window = max(max(dispatch_end_s, last_end) - warmup_s, 1e-9)
    good = [s for s in ok if meets_slo(s, slo)]
    errors = Counter(s.status for s in completed if not s.ok)
    return {
        "duration_s": window,
        "requests": {
            "scheduled": len(measured),
            "sent": sum(1 for s in measured if s.sent is not None),
            "completed": len(completed),
            "ok": len(ok),
            "errors_by_code": dict(sorted(errors.items())),
            "cancelled": len(cancelled),
            "warmup": len(samples) - len(measured),
            "retries": sum(s.retries for s in measured),
            "retried": sum(1 for s in measured if s.retries),
        },
        "latency_s": {
            "ttft": percentiles([s.ttft for s in ok if s.ttft is not None]),
            "itl": percentiles([gap for s in ok for gap in s.itls]),
            "tpot": percentiles([s.tpot for s in ok if s.tpot is not None]),
            "e2e": percentiles([s.e2e for s in ok if s.e2e is not None]),
        },
        "throughput": {
            "requests_per_s": len(completed) / window,
            "ok_requests_per_s": len(ok) / window,
            "input_tokens_per_s": sum(s.input_tokens for s in ok) / window,
            "output_tokens_per_s": sum(s.output_tokens for s in ok) / window,
            "reasoning_tokens_per_s": sum(s.reasoning_tokens for s in ok) / window,
        },
        "goodput": {
            "requests_per_s": len(good) / window,
            "fraction": len(good) / len(measured) if measured else 0.0,
            "slo": dict(slo),
        },
        "tokens": {
            "input_mean": _mean([s.input_tokens for s in ok]),
            "output_mean": _mean([s.output_tokens for s in ok]),
            "reasoning_mean": _mean([s.reasoning_tokens for s in ok]),
            "cached_mean": _mean([s.cached_tokens for s in ok]),
        },
        "timeseries": timeseries(samples),
    }
