"""The engine's metrics reach the node's Prometheus endpoint with sane values."""

from __future__ import annotations

import time
import urllib.request

import grpc
import pytest
import ray

from museserve.client import ChatClient, build_request

pytestmark = pytest.mark.integration

EXPECTED = (
    "ray_museserve_time_to_first_token_seconds_count",
    "ray_museserve_inter_token_latency_seconds_count",
    "ray_museserve_e2e_request_latency_seconds_count",
    "ray_museserve_request_queue_time_seconds_count",
    "ray_museserve_prompt_tokens_total",
    "ray_museserve_generation_tokens_total",
    "ray_museserve_request_success_total",
    "ray_museserve_prefix_cache_queries_total",
    "ray_museserve_num_requests_running",
    "ray_museserve_num_requests_waiting",
    "ray_museserve_kv_cache_usage_perc",
)


def _scrape() -> dict[str, float]:
    port = ray._private.worker.global_worker.node.metrics_export_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("ray_museserve_") and 'model="muse-tiny"' in line:
            name = line.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def test_engine_metrics_are_exported(client: ChatClient):
    for _ in range(3):
        client.chat(build_request("measure me", max_output_tokens=8, temperature=0.0), timeout=30)
    deadline = time.monotonic() + 60  # Ray's agent exports on an interval of seconds
    while True:
        values = _scrape()
        if all(name in values for name in EXPECTED) and values["ray_museserve_e2e_request_latency_seconds_count"] >= 3:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"missing after 60 s: {[n for n in EXPECTED if n not in values]}")
        time.sleep(1)
    assert values["ray_museserve_generation_tokens_total"] >= 3
    assert values["ray_museserve_time_to_first_token_seconds_count"] >= 3
    assert values["ray_museserve_prompt_tokens_total"] >= 3
    assert 0.0 <= values["ray_museserve_kv_cache_usage_perc"] <= 1.0


def _scrape_gateway() -> dict[str, float]:
    """Gateway series keyed by name and labels, e.g. `...decisions_total{outcome="admitted",tier="default"}`."""
    port = ray._private.worker.global_worker.node.metrics_export_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("ray_museserve_gateway_"):
            name, labels = line.split("{", 1)
            kept = ",".join(
                p for p in labels.split("}")[0].split(",") if p.split("=")[0] in ("outcome", "tier", "kind")
            )
            key = f"{name}{{{kept}}}"
            values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def test_gateway_decisions_and_tenant_tokens_are_exported(client: ChatClient, grpc_address: str):
    client.chat(build_request("count me", max_output_tokens=4, temperature=0.0), timeout=30)
    with pytest.raises(grpc.RpcError):
        ChatClient(grpc_address).chat(build_request("who am I"), timeout=30)  # no key
    admitted = 'ray_museserve_gateway_decisions_total{outcome="admitted",tier="default"}'
    refused = 'ray_museserve_gateway_decisions_total{outcome="unauthenticated",tier=""}'
    prompt = 'ray_museserve_gateway_tenant_tokens_total{kind="prompt"}'
    deadline = time.monotonic() + 60
    while True:
        values = _scrape_gateway()
        if values.get(admitted, 0) >= 1 and values.get(refused, 0) >= 1 and values.get(prompt, 0) >= 1:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"gateway series after 60 s: {sorted(values)}")
        time.sleep(1)
