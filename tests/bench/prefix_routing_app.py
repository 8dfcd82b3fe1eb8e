"""The app `bench_prefix_routing` measures: one pool of 3 SmolLM2-135M replicas behind one
gateway, deployed once per routing policy on one local Ray cluster, and what its replicas and
routers exported (Ray's metrics agent on this node)."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict

from museserve.config import MuseServeConfig, load_config, parse_config
from tests.support import free_port, replica_actor_names

APP = "museserve-routing-bench"
POOL = "smollm2-135m"
REPLICAS = 3
_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def bench_config(policy: str, grpc_port: int, http_port: int) -> MuseServeConfig:
    """The shipped local config, its real pool alone with 3 replicas of one CPU thread each
    (the 2 cores are shared by all three, the gateway and the load), routed by `policy`."""
    data = load_config().model_dump(mode="json")
    pool = next(p for p in data["pools"] if p["name"] == POOL)
    pool["deployment"]["num_replicas"] = REPLICAS
    pool["model"]["cpu_threads"] = 1
    pool["routing"]["policy"] = policy
    data["pools"] = [pool]
    data["app_name"] = APP
    data["gateway"]["routes"] = {}
    data["gateway"]["default_model"] = POOL
    data["gateway"]["tiers"]["default"]["user"] = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1 << 40}
    data["gateway"]["tiers"]["default"]["tenant"] = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1 << 40}
    data["server"].update(grpc_port=grpc_port, http_port=http_port, direct_grpc_port=free_port())
    return parse_config(data, source=f"prefix routing bench ({policy})")


def scrape() -> list[tuple[str, dict[str, str], float]]:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    series = []
    for line in body.splitlines():
        match = _SERIES.match(line)
        if match:
            series.append((match["name"], dict(_LABEL.findall(match["labels"])), float(match["value"])))
    return series


def replica_requests() -> dict[str, float]:
    """Requests each replica of the pool has processed, as the metrics agent has them now,
    by replica id (old replicas' series included)."""
    counts: dict[str, float] = defaultdict(float)
    for name, labels, value in scrape():
        if name == "ray_serve_deployment_request_counter_total" and labels.get("application") == APP:
            if labels.get("deployment") == f"pool-{POOL}":
                counts[labels["replica"]] += value
    return dict(counts)


def requests_since(before: dict[str, float], sent: int, timeout_s: float = 60.0) -> dict[str, float]:
    """Requests each live replica of the pool processed since `replica_requests()` returned
    `before`, once the metrics agent has all `sent` (it exports on an interval of seconds)."""
    alive = [name.rsplit("#", 1)[1] for name in replica_actor_names(f"pool-{POOL}")]
    deadline = time.monotonic() + timeout_s
    while True:
        after = replica_requests()
        counts = {r: after.get(r, 0.0) - before.get(r, 0.0) for r in alive}
        if sum(counts.values()) >= sent or time.monotonic() > deadline:
            return counts
        time.sleep(2.0)


def router_series() -> dict[str, float]:
    """The pool router's counters by reason, and its decision-time buckets (le -> count)."""
    out: dict[str, float] = defaultdict(float)
    for name, labels, value in scrape():
        if labels.get("model") != POOL or not name.startswith("ray_museserve_router_"):
            continue
        if name == "ray_museserve_router_decisions_total":
            out[f"decisions.{labels['reason']}"] += value
        elif name == "ray_museserve_router_decision_seconds_bucket":
            out[f"decision_le.{labels['le']}"] += value
        elif name.endswith("_total"):
            out[name.removeprefix("ray_museserve_router_")] += value
    return dict(out)


def bucket_quantile(buckets: dict[str, float], q: float) -> float | None:
    """The upper bound of the bucket holding quantile `q` (a cumulative histogram)."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] == 0:
        return None
    total = bounds[-1][1]
    return next(le for le, count in bounds if count >= q * total)
