"""PNG plots with matplotlib's Agg backend (no display needed): a run's latency CDFs and its
throughput and TTFT over time; a sweep's TTFT p50/p99 against offered load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def latency_cdfs(latencies: Mapping[str, Sequence[float]], path: Path, title: str = "") -> Path:
    """`latencies`: measure name -> raw values in seconds (one panel each)."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, values) in zip(axes.flat, latencies.items(), strict=False):
        v = np.sort(np.asarray(values, dtype=float))
        if v.size:
            ax.plot(v * 1000, np.arange(1, v.size + 1) / v.size)
        ax.set_title(f"{name} (n={v.size})")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction <= x")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "latency CDFs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def over_time(series: Sequence[Mapping], path: Path, title: str = "") -> Path:
    t = [p["t"] for p in series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(t, [p["completed"] for p in series], label="completed/s")
    top.plot(t, [p["sent"] for p in series], label="sent/s", alpha=0.6)
    top.set_ylabel("requests per second")
    twin = top.twinx()
    twin.plot(t, [p["output_tokens"] for p in series], color="tab:green", label="output tokens/s")
    twin.set_ylabel("output tokens per second")
    top.legend(loc="upper left")
    ttft = [np.nan if p["ttft_p50"] is None else p["ttft_p50"] * 1000 for p in series]
    bottom.plot(t, ttft, marker=".")
    bottom.set_ylabel("TTFT p50 (ms)")
    bottom.set_xlabel("run time (s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.suptitle(title or "throughput and TTFT over time")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def sweep_ttft(runs: Sequence[Mapping], path: Path, knee_rate: float | None = None) -> Path:
    offered = [r["offered_rps"] for r in runs]
    fig, ax = plt.subplots(figsize=(8, 5))
    for q in ("p50", "p99"):
        ax.plot(offered, [np.nan if r["latency_s"]["ttft"][q] is None else r["latency_s"]["ttft"][q] * 1000
                          for r in runs], marker="o", label=f"TTFT {q}")  # fmt: skip
    if knee_rate is not None:
        ax.axvline(knee_rate, color="tab:red", linestyle="--", label=f"knee {knee_rate:g} rps")
    ax.set_xlabel("offered load (requests per second)")
    ax.set_ylabel("TTFT (ms)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
