"""What the code exports to Prometheus, and which metric names a PromQL expression reads.

Exported names are collected from the `Counter(` / `Histogram(` / `Gauge(` definitions under
platform/museserve, as Ray's exporter writes them: `ray_` first, `_total` after a counter
whose name lacks it, `_bucket` / `_sum` / `_count` after a histogram.
"""

from __future__ import annotations

import re
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "platform" / "museserve"

# Ray Serve's own metrics that dashboards and alerts may read, each checked against the
# installed Ray's source by `ray_serve_metric_names` (name as defined there -> as exported).
RAY_SERVE_BUILTINS = {
    "serve_deployment_replica_starts": "ray_serve_deployment_replica_starts_total",  # counter, 1 per replica start
    "serve_deployment_replica_healthy": "ray_serve_deployment_replica_healthy",  # gauge
}

_DEFINITION = re.compile(r"\b(Counter|Histogram|Gauge)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
_NOT_METRICS = {
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}


def exported_name_set(definitions: list[tuple[str, str]]) -> set[str]:
    names: set[str] = set()
    for kind, name in definitions:
        full = f"ray_{name}"
        if kind == "Histogram":
            names |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
        elif kind == "Counter" and not name.endswith("_total"):
            names.add(f"{full}_total")
        else:
            names.add(full)
    return names


def museserve_metric_names() -> set[str]:
    definitions = [m.groups() for path in SOURCE.rglob("*.py") for m in _DEFINITION.finditer(path.read_text())]
    return exported_name_set(definitions)


def ray_serve_metric_names() -> set[str]:
    """The built-ins above that the installed Ray Serve really defines."""
    serve_source = "\n".join(p.read_text() for p in (Path(ray.__file__).parent / "serve" / "_private").glob("*.py"))
    return {exported for name, exported in RAY_SERVE_BUILTINS.items() if f'"{name}"' in serve_source}


def allowed_metric_names() -> set[str]:
    return museserve_metric_names() | ray_serve_metric_names()


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels, numbers and
    Grafana variables left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        token = match.group(0)
        if expr[match.end() :].lstrip().startswith("(") or token.lower() in _NOT_METRICS:
            continue  # a function or an aggregation, or an operator keyword
        names.add(token)
    return names
