"""`museserve serve`'s checks before Ray starts: ports it binds, model files it reads."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from museserve.config import MuseServeConfig, ServerConfig, parse_config
from museserve.serve.preflight import bind_error, model_problems, port_problems, preflight
from tests.support import free_port


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process would hold: bound and listening on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def server(**ports: int | None) -> ServerConfig:
    defaults = {"grpc_port": free_port(), "http_port": free_port(), "direct_grpc_port": free_port()}
    return ServerConfig(**(defaults | ports))


def config_with(model: dict, **preprocess: str) -> MuseServeConfig:
    return parse_config({"pools": [{"name": "m", "model": model}], "preprocess": preprocess})


def hf_directory(root: Path, *names: str) -> Path:
    root.mkdir()
    for name in names:
        (root / name).write_text("{}")
    return root


def test_free_ports_pass():
    assert port_problems(server()) == []
    assert bind_error("127.0.0.1", free_port(), reuse_address=False) is None


@pytest.mark.parametrize("reuse_address", [True, False])
def test_a_held_port_is_named_with_its_key_and_the_reason(held_port: int, reuse_address: bool):
    assert bind_error("127.0.0.1", held_port, reuse_address=reuse_address) == "address already in use"
    problems = port_problems(server(direct_grpc_port=held_port))
    assert problems == [
        f"cannot bind 127.0.0.1:{held_port} (the gateway's direct gRPC port, server.direct_grpc_port): "
        "address already in use"
    ]


def test_the_grpc_proxy_binds_every_interface_so_a_loopback_holder_blocks_it(held_port: int):
    (problem,) = port_problems(server(grpc_port=held_port))
    assert problem.startswith(
        f"cannot bind [::]:{held_port} (Ray Serve's gRPC proxy, all interfaces, server.grpc_port)"
    )


def test_the_http_port_held_is_named(held_port: int):
    (problem,) = port_problems(server(http_port=held_port))
    assert f"127.0.0.1:{held_port}" in problem and "server.http_port" in problem


def test_one_port_for_two_servers_is_refused():
    port = free_port()
    problems = port_problems(server(grpc_port=port, direct_grpc_port=port))
    assert problems == [
        f"server.grpc_port and server.direct_grpc_port are both {port}: each server needs a port of its own"
    ]


def test_a_direct_port_turned_off_is_not_probed(held_port: int):
    assert port_problems(server(direct_grpc_port=None)) == []


def test_dummy_weights_and_package_paths_need_no_file_here():
    assert model_problems(config_with({"load_format": "dummy"})) == []
    assert model_problems(config_with({"load_format": "gguf", "path": "package:no_such_pkg/x.gguf"})) == []


def test_a_missing_checkpoint_is_named_with_its_pool_and_key(tmp_path: Path):
    missing = tmp_path / "nowhere"
    assert model_problems(config_with({"load_format": "safetensors", "path": str(missing)})) == [
        f"cannot read {missing} (pool m, pools[0].model.path, load_format safetensors): no such file or directory"
    ]
    assert model_problems(config_with({"load_format": "gguf", "path": str(missing / "m.gguf")})) == [
        f"cannot read {missing / 'm.gguf'} (pool m, pools[0].model.path, load_format gguf): no such file or directory"
    ]


def test_a_gguf_path_that_is_a_directory_and_a_directory_path_that_is_a_file(tmp_path: Path):
    (problem,) = model_problems(config_with({"load_format": "gguf", "path": str(tmp_path)}))
    assert problem.endswith("is a directory, not a file")
    file = tmp_path / "model.gguf"
    file.write_bytes(b"GGUF")
    assert model_problems(config_with({"load_format": "gguf", "path": str(file)})) == []
    (problem,) = model_problems(config_with({"load_format": "safetensors", "path": str(file)}))
    assert problem.startswith(f"cannot read {file} ") and "not a directory" in problem


def test_a_hugging_face_directory_needs_config_and_weights(tmp_path: Path):
    no_weights = hf_directory(tmp_path / "a", "config.json")
    (problem,) = model_problems(config_with({"load_format": "safetensors", "path": str(no_weights)}))
    assert problem.endswith("it holds no *.safetensors file")
    no_config = hf_directory(tmp_path / "b", "model.safetensors")
    (problem,) = model_problems(config_with({"load_format": "safetensors", "path": str(no_config)}))
    assert problem.startswith(f"cannot read {no_config / 'config.json'} ") and problem.endswith(
        "no such file or directory"
    )
    whole = hf_directory(tmp_path / "c", "config.json", "model-1.safetensors", "model-2.safetensors", "tokenizer.json")
    assert model_problems(config_with({"load_format": "safetensors", "path": str(whole)})) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_weight_file_is_named(tmp_path: Path):
    directory = hf_directory(tmp_path / "m", "config.json", "model.safetensors")
    (directory / "model.safetensors").chmod(0)
    (problem,) = model_problems(config_with({"load_format": "safetensors", "path": str(directory)}))
    assert problem.startswith(f"cannot read {directory / 'model.safetensors'} ") and problem.endswith(
        "permission denied"
    )


def test_the_configured_tokenizer_must_be_readable(tmp_path: Path):
    (problem,) = model_problems(config_with({"load_format": "dummy"}, tokenizer=str(tmp_path)))
    assert problem == f"cannot read {tmp_path / 'tokenizer.json'} (preprocess.tokenizer): no such file or directory"
    (tmp_path / "tokenizer.json").write_text("{}")
    assert model_problems(config_with({"load_format": "dummy"}, tokenizer=str(tmp_path))) == []


def test_preflight_reports_ports_then_files(held_port: int, tmp_path: Path):
    config = config_with({"load_format": "gguf", "path": str(tmp_path / "m.gguf")})
    config = config.model_copy(update={"server": server(http_port=held_port)})
    problems = preflight(config)
    assert len(problems) == 2 and "server.http_port" in problems[0] and "m.gguf" in problems[1]
