"""A real Prometheus server scrapes the session app's node endpoint: the key series arrive
with sane values, and every dashboard and alert expression is valid PromQL against it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig
from tests.deploy.test_alerts import RULES
from tests.deploy.test_dashboard import load as load_dashboard
from tests.deploy.test_dashboard import queries as dashboard_queries
from tests.support import free_port

pytestmark = pytest.mark.integration

WAIT_S = 45  # Ray's agent exports every few seconds; Prometheus scrapes every second


@pytest.fixture
def prometheus(app_config: MuseServeConfig, tmp_path: Path) -> Iterator[str]:
    """A Prometheus server on a free loopback port scraping this node's metrics every second."""
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("the prometheus server is not installed: run `make test` (it installs prometheus from apt)")
    target = f"127.0.0.1:{ray._private.worker.global_worker.node.metrics_export_port}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    args = [
        exe,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ]
    with open(tmp_path / "prometheus.log", "wb") as log:
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{address}"
        _until(lambda: _ready(url), 20, lambda: f"Prometheus not ready: {(tmp_path / 'prometheus.log').read_text()}")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200
    except OSError:
        return False


def _until(check, timeout_s: float, why) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(why())
        time.sleep(0.5)


def _query(url: str, expr: str) -> dict:
    query = urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:  # a bad expression is a 400 with the error in the body
        return json.load(e)


def _value(url: str, expr: str) -> float | None:
    result = _query(url, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_key_series(prometheus: str, client: ChatClient) -> None:
    for _ in range(3):
        client.chat(build_request("scrape me", max_output_tokens=8, temperature=0.0), timeout=30)
    expected = {
        'sum(ray_museserve_time_to_first_token_seconds_count{model="muse-tiny"})': lambda v: v >= 3,
        'sum(ray_museserve_generation_tokens_total{model="muse-tiny"})': lambda v: v >= 3,
        'max(ray_museserve_kv_cache_usage_perc{model="muse-tiny"})': lambda v: 0.0 <= v <= 1.0,
        'min(ray_museserve_kv_cache_usage_perc{model="muse-tiny"})': lambda v: 0.0 <= v <= 1.0,
        'sum(ray_museserve_gateway_decisions_total{outcome="admitted"})': lambda v: v >= 3,
        'sum(ray_museserve_gateway_requests_total{api="grpc",code="OK"})': lambda v: v >= 3,
        "count(ray_serve_deployment_replica_starts_total)": lambda v: v >= 1,
    }
    values: dict[str, float | None] = {}

    def all_sane() -> bool:
        values.update({expr: _value(prometheus, expr) for expr in expected})
        return all(v is not None and expected[e](v) for e, v in values.items())

    _until(all_sane, WAIT_S, lambda: f"series after {WAIT_S} s: {values}")


def test_every_dashboard_and_alert_expression_is_valid_promql(prometheus: str) -> None:
    rules = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    for expr in dashboard_queries(load_dashboard()) + rules:
        concrete = re.sub(r"\$__rate_interval", "1m", expr).replace("$model", ".*")
        answer = _query(prometheus, concrete)
        assert answer["status"] == "success", (expr, answer)
