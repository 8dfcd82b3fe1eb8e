"""`compare a.json b.json`: a table of the key metrics of two run reports, with deltas."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

# (label, path into the report, unit scale for display, unit)
METRICS: tuple[tuple[str, tuple[str, ...], float, str], ...] = (
    ("offered rps", ("offered_rps",), 1, ""),
    ("throughput rps", ("throughput", "requests_per_s"), 1, ""),
    ("output tok/s", ("throughput", "output_tokens_per_s"), 1, ""),
    ("goodput rps", ("goodput", "requests_per_s"), 1, ""),
    ("goodput fraction", ("goodput", "fraction"), 1, ""),
    *((f"{m} {q}", ("latency_s", m, q), 1000, "ms") for m in ("ttft", "itl", "tpot", "e2e") for q in ("p50", "p99")),
    ("ok", ("requests", "ok"), 1, ""),
    ("cancelled", ("requests", "cancelled"), 1, ""),
)


def _get(report: Mapping, path: tuple[str, ...]) -> float | None:
    node: object = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) else None


def _errors(report: Mapping) -> float:
    return float(sum((report.get("requests", {}).get("errors_by_code") or {}).values()))


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def compare_reports(a: Mapping, b: Mapping) -> list[tuple[str, float | None, float | None, float | None, float | None]]:
    """Rows of (metric, a, b, b - a, percent change or None)."""
    rows = []
    pairs = [(label + (f" ({unit})" if unit else ""), _get(a, path), _get(b, path), scale)
             for label, path, scale, unit in METRICS]  # fmt: skip
    pairs.append(("errors", _errors(a), _errors(b), 1))
    for label, va, vb, scale in pairs:
        va = None if va is None else va * scale
        vb = None if vb is None else vb * scale
        delta = None if va is None or vb is None else vb - va
        pct = None if delta is None or not va else 100.0 * delta / abs(va)
        rows.append((label, va, vb, delta, pct))
    return rows


def format_table(rows: list, name_a: str = "a", name_b: str = "b") -> str:
    header = f"{'metric':<22} {name_a[:14]:>14} {name_b[:14]:>14} {'delta':>12} {'delta %':>9}"
    lines = [header, "-" * len(header)]
    for label, va, vb, delta, pct in rows:
        pct_s = "-" if pct is None else f"{pct:+.1f}%"
        delta_s = "-" if delta is None else ("+" if delta >= 0 else "") + _fmt(delta)
        lines.append(f"{label:<22} {_fmt(va):>14} {_fmt(vb):>14} {delta_s:>12} {pct_s:>9}")
    return "\n".join(lines)


def compare_files(a: Path, b: Path) -> str:
    return format_table(compare_reports(json.loads(a.read_text()), json.loads(b.read_text())), a.name, b.name)
