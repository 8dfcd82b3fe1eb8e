"""`museserve serve` refuses at once, in one line, what would fail later inside Ray: a busy
port, a model file it cannot read. No Ray node is started."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import yaml

from museserve.config import load_config
from tests.support import free_port

MUSESERVE = [sys.executable, "-m", "museserve.cli"]
# Liveness bound: a serve that went on to start Ray and serve would never exit on its own, so
# `subprocess.run` raises TimeoutExpired and the test fails; how fast it refuses is not claimed.
EXIT_WITHIN_S = 60.0


def _config(**server: int) -> dict:
    """The shipped config on free ports (or those given)."""
    data = load_config().model_dump(mode="json")
    data["server"].update(
        {"grpc_port": free_port(), "http_port": free_port(), "direct_grpc_port": free_port()} | server
    )
    return data


def _serve(tmp_path: Path, data: dict) -> subprocess.CompletedProcess:
    config_path = tmp_path / "museserve.yaml"
    config_path.write_text(yaml.safe_dump(data))
    return subprocess.run(
        [*MUSESERVE, "serve", "--config", str(config_path)], capture_output=True, text=True, timeout=EXIT_WITHIN_S
    )


def test_a_busy_port_fails_before_ray_naming_the_port_and_its_key(tmp_path: Path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = _serve(tmp_path, _config(direct_grpc_port=port))
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"museserve serve: cannot bind 127.0.0.1:{port} (the gateway's direct gRPC port, server.direct_grpc_port): "
        "address already in use"
    ]
    assert "ray" not in (result.stdout + result.stderr).lower()


def test_a_missing_checkpoint_fails_before_ray_naming_the_path(tmp_path: Path):
    missing = tmp_path / "no-such-model.gguf"
    data = _config()
    pool = data["pools"][0]
    pool["model"].update(load_format="gguf", path=str(missing))
    result = _serve(tmp_path, data)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"museserve serve: cannot read {missing} (pool {pool['name']}, pools[0].model.path, load_format gguf): "
        "no such file or directory"
    ]
