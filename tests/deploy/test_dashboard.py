"""The Grafana dashboard the chart ships: a Grafana 10 JSON model on a Prometheus datasource
variable, whose every query reads only metrics the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy.promql import allowed_metric_names, exported_name_set, metric_names, museserve_metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "museserve" / "files" / "grafana-dashboard.json"
REQUIRED_PANELS = (
    "Requests by admission outcome",
    "Error ratio",
    "Time to first token p50 / p99",
    "Inter-token latency p99",
    "End-to-end latency p99",
    "Queue time p50 / p99",
    "Tokens/s: prompt and generation",
    "Running / waiting requests",
    "KV-cache use",
    "Prefix-cache hit ratio",
    "Refused rates by tier: overloaded / shed / limited",
    "Estimated wait to first token p50 / p90",
    "Queued requests dropped before any work",
    "Preemptions by reason",
    "Degraded requests by tier",
    "Tenant token rates (top 10)",
    "Mirror outcomes",
    "Mirror lag p50 / p99",
    "Redis errors",
    "Routing decisions by reason",
    "Prefix routing hit-rate gain",
    "Router KV-event staleness p50 / p90",
    "Router decision time p99",
    "Router KV-feed resyncs and index size",
    "Speculative acceptance rate",
    "Speculative mean accepted length",
    "LoRA adapter loads, failures and evictions",
    "LoRA tokens/s by adapter (top 10)",
)


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["query"]["query"]))
    return exprs


def test_the_promql_parser_finds_metric_names_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (model, le) (rate(ray_a_bucket{model=~"$model"}[$__rate_interval])))'
        " / on (model) group_left sum without (x) (ray_b offset 15m) * 1e3 and topk(10, ray_c)"
    )
    assert metric_names(expr) == {"ray_a_bucket", "ray_b", "ray_c"}
    assert exported_name_set([("Histogram", "h"), ("Counter", "c"), ("Counter", "d_total")]) == {
        "ray_h_bucket", "ray_h_sum", "ray_h_count", "ray_c_total", "ray_d_total",
    }  # fmt: skip


def test_the_exported_set_holds_every_tier() -> None:
    names = museserve_metric_names()
    for name in (
        "ray_museserve_time_to_first_token_seconds_bucket",
        "ray_museserve_kv_cache_usage_perc",
        "ray_museserve_gateway_requests_total",
        "ray_museserve_gateway_mirror_lag_seconds_count",
        "ray_museserve_preprocess_seconds_bucket",
        "ray_museserve_preprocess_media_tokens_total",
    ):
        assert name in names


def test_the_dashboard_is_a_grafana_model_on_a_prometheus_variable() -> None:
    dashboard = load()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in dashboard["panels"]}
    assert [t for t in REQUIRED_PANELS if t not in titles] == []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_every_query_reads_exported_metrics() -> None:
    allowed = allowed_metric_names()
    unknown = {name for expr in queries(load()) for name in metric_names(expr)} - allowed
    assert unknown == set(), f"the dashboard reads metrics nobody exports: {sorted(unknown)}"


def test_the_ray_serve_builtins_exist_in_the_installed_ray() -> None:
    from tests.deploy.promql import RAY_SERVE_BUILTINS, ray_serve_metric_names

    assert ray_serve_metric_names() == set(RAY_SERVE_BUILTINS.values())
