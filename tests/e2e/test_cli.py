"""The commands a new user runs: `museserve serve`, then `museserve chat` from another shell."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from museserve.client import ChatClient, build_request
from museserve.config import load_config
from tests.support import free_port, wait_serving

pytestmark = pytest.mark.integration

MUSESERVE = [sys.executable, "-m", "museserve.cli"]


@dataclass
class Served:
    address: str
    process: subprocess.Popen


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`museserve serve` in its own process; the module's last test stops it with Ctrl-C."""
    data = load_config().model_dump(mode="json")
    data["server"].update(grpc_port=free_port(), http_port=free_port(), direct_grpc_port=free_port())
    config_path = tmp_path_factory.mktemp("cli") / "museserve.yaml"
    config_path.write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [*MUSESERVE, "serve", "--config", str(config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        address = f"127.0.0.1:{data['server']['grpc_port']}"
        wait_serving(address, timeout_s=120)
        yield Served(address, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _chat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MUSESERVE, "chat", *args], capture_output=True, text=True, timeout=120)


def test_chat_answers_with_the_real_default_model(served: Served):
    result = _chat("What is the capital of France?", "--address", served.address, "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "[smollm2-135m] finish=stop" in result.stderr


def test_chat_streams_text_and_reports_usage(served: Served):
    result = _chat("hello", "--stream", "--address", served.address, "--temperature", "0", "--max-output-tokens", "12")
    assert result.returncode == 0, result.stderr
    assert "[smollm2-135m] finish=" in result.stderr
    assert "output=" in result.stderr


def test_chat_unary_in_thinking_mode_is_routed_to_a_model_that_reasons(served: Served):
    result = _chat(
        "why?", "--mode", "thinking", "--thinking-budget", "4", "--max-output-tokens", "4", "--address", served.address
    )
    assert result.returncode == 0, result.stderr
    assert "[muse-tiny]" in result.stderr and "reasoning=" in result.stderr


def test_chat_reports_a_refusal_with_status_and_field(served: Served):
    result = _chat("hello", "--model", "nope", "--address", served.address)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT: model: unknown model 'nope'" in result.stderr


def test_chat_refuses_a_missing_file_before_sending(tmp_path: Path):
    result = _chat("look", "--image", str(tmp_path / "missing.png"), "--address", "127.0.0.1:1")
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_sigterm_drains_the_server(served: Served):
    """Last in the module: SIGTERM with streams in flight. They finish, a new request is
    refused with UNAVAILABLE meanwhile, and the process exits 0."""
    client = ChatClient(served.address)
    streams = [
        client.stream(build_request("tell me a story", seed=i, max_output_tokens=200), timeout=60) for i in range(3)
    ]
    for stream in streams:
        next(stream)  # generating
    served.process.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    with pytest.raises(grpc.RpcError) as refused:
        client.chat(build_request("anyone there?", max_output_tokens=2), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    for stream in streams:
        *_, last = stream
        assert last.WhichOneof("event") == "finish"
    client.close()
    output, _ = served.process.communicate(timeout=90)
    assert served.process.returncode == 0, output
    assert "gRPC  127.0.0.1:" in output and "HTTP  http://127.0.0.1:" in output
    assert "draining: new requests are refused with UNAVAILABLE" in output and "stopped" in output
