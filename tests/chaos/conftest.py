"""The chaos app: its own Redis, local Ray node and museserve app, for this folder alone.

The scenarios kill replicas, stop Redis, redeploy and finally delete the app, so the app is
theirs alone: the fixture starts a Ray node for the module and shuts it down after it (the
integration tests, later in the session, start their own). `make chaos` runs the folder
with a 60 s overload; `make test` runs it with the rest, with short durations. Each
scenario adds a row to the summary table printed at the end and written to
`.chaos/summary.json`.

MUSESERVE_CHAOS_SECONDS sets how long the overload lasts (`make chaos`: 60).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from museserve.config import MuseServeConfig, load_config, parse_config
from museserve.gateway.identity import key_digest
from tests.chaos.ledger import Tally, table
from tests.redis_server import RedisServer
from tests.support import free_port, start_local_app

CHAOS_KEY = "sk-chaos"  # tier default
GOLD_KEY = "sk-chaos-gold"  # tier gold: a better priority, for the two-tier overload
GATEWAY_REPLICAS = 2  # as in production: a redeploy or a dead replica leaves one serving
# A stopping gateway lets its streams finish for this long: a 300-token answer queued behind an
# overloaded batch on two cores, while new replicas start beside it, can take over 20 s.
DRAIN_TIMEOUT_S = 40.0
REQUEST_TIMEOUT_S = 60.0
SUMMARY_PATH = Path(".chaos") / "summary.json"

_tallies: list[Tally] = []


def overload_seconds() -> float:
    return float(os.environ.get("MUSESERVE_CHAOS_SECONDS", "10"))


def record(tally: Tally) -> Tally:
    """Adds a scenario's row to the summary (whatever its assertions then say)."""
    _tallies.append(tally)
    return tally


def chaos_config(redis_url: str) -> MuseServeConfig:
    """The shipped local config (its live admission included: no hand-tuned bound) with free
    ports, API keys in two tiers rate limited in Redis (so every decision asks Redis), and a
    short drain."""
    data = load_config().model_dump(mode="json")
    data["server"].update(
        grpc_port=free_port(), http_port=free_port(), direct_grpc_port=free_port(),
        request_timeout_s=REQUEST_TIMEOUT_S, drain_timeout_s=DRAIN_TIMEOUT_S,
    )  # fmt: skip
    generous = {"requests_per_minute": 600_000, "tokens_per_minute": 600_000_000}
    data["gateway"].update(
        auth="api_key",
        api_keys=[
            {"sha256": key_digest(CHAOS_KEY), "tenant": "chaos", "tier": "default"},
            {"sha256": key_digest(GOLD_KEY), "tenant": "chaos-gold", "tier": "gold"},
        ],
        tiers={
            "default": {"priority": 1, "drop_late": True, "user": generous, "tenant": generous},
            "gold": {"priority": 0, "drop_late": True, "user": generous, "tenant": generous},
        },
        redis={"url": redis_url, "timeout_ms": 250, "on_unavailable": "fail_open"},
    )
    data["gateway"]["deployment"]["num_replicas"] = GATEWAY_REPLICAS
    data["gateway"].update(default_model=None, routes={})
    data["pools"] = [p for p in data["pools"] if p["name"] == "muse-tiny"]  # the dummy model: a known capacity
    pool = data["pools"][0]
    pool["engine"].update(context_length=4096, max_output_tokens=512, stream_interval_ms=0)
    return parse_config(data, source="chaos config")


@dataclass(frozen=True)
class ChaosApp:
    config: MuseServeConfig
    redis: RedisServer

    @property
    def address(self) -> str:
        """The gateway's direct gRPC port, the path product services use."""
        return f"127.0.0.1:{self.config.server.direct_grpc_port}"

    @property
    def proxy_address(self) -> str:
        return f"127.0.0.1:{self.config.server.grpc_port}"


@pytest.fixture(scope="module")
def chaos_app() -> Iterator[ChaosApp]:
    import ray

    if ray.is_initialized():
        pytest.fail("tests/chaos needs a Ray node of its own, and one is already running in this process")
    with RedisServer() as redis:
        config = chaos_config(redis.url)
        try:
            start_local_app(config)
            yield ChaosApp(config, redis)
        finally:
            ray.shutdown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _tallies:
        return
    terminalreporter.write_sep("=", "chaos summary")
    terminalreporter.write_line(table(_tallies))
    SUMMARY_PATH.parent.mkdir(exist_ok=True)
    SUMMARY_PATH.write_text(json.dumps([t.as_dict() for t in _tallies], indent=2))
    terminalreporter.write_line(f"written to {SUMMARY_PATH}")
