"""What `museserve serve` checks before it starts Ray: every port the config binds is free,
and every model file a pool loads is readable.

Without these checks a busy port surfaces minutes later as Ray's "Failed to update the
deployments ['gateway']" with a replica's traceback, and an unreadable weight file as a
model replica that keeps restarting. Each problem here is one line that names the address
or the path, the config key that set it, and why: `cannot bind 127.0.0.1:50052 (the
gateway's direct gRPC port, server.direct_grpc_port): address already in use`.

A port is probed the way its server binds it (a passing probe is closed at once, so a
port taken in the moment between the check and Ray's start still fails there):
- Ray Serve's gRPC proxy binds `[::]` (every interface, IPv4 too) with SO_REUSEADDR, as
  grpc's core does; a host without IPv6 gets `0.0.0.0`.
- Ray Serve's HTTP proxy binds `http_host` without SO_REUSEADDR, so a port still held by
  connections in TIME_WAIT fails there too, and here.
- The gateway's direct gRPC server binds with SO_REUSEPORT, which would let it share a port
  with a stale server of an earlier run; the probe leaves it off, so such a port is busy.

Model files: a GGUF file, or a Hugging Face directory's config.json, weights and the other
files it holds; `preprocess.tokenizer` when set. `package:NAME/FILE` paths are left to
`check_pools`, which finds the package and reads the file's metadata next. Dummy weights
need no file.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

from museserve.config import MuseServeConfig, ServerConfig

ALL_INTERFACES = "::"
PACKAGE_SCHEME = "package:"  # checkpoint.paths: resolved by check_pools
HF_OPTIONAL_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class Listener:
    """One address a server of the app binds."""

    host: str
    port: int
    what: str  # for a person: which server
    key: str  # the config key that sets the port
    reuse_address: bool  # whether that server sets SO_REUSEADDR

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def listeners(server: ServerConfig) -> list[Listener]:
    out = [
        Listener(ALL_INTERFACES, server.grpc_port, "Ray Serve's gRPC proxy, all interfaces", "server.grpc_port", True),
        Listener(server.http_host, server.http_port, "Ray Serve's HTTP proxy", "server.http_port", False),
    ]
    if server.direct_grpc_enabled:
        assert server.direct_grpc_port is not None
        out.append(
            Listener(
                server.direct_grpc_host,
                server.direct_grpc_port,
                "the gateway's direct gRPC port",
                "server.direct_grpc_port",
                True,
            )
        )
    return out


def preflight(config: MuseServeConfig) -> list[str]:
    """Every problem found, one line each; empty when the app can start."""
    return port_problems(config.server) + model_problems(config)


def port_problems(server: ServerConfig) -> list[str]:
    wanted = listeners(server)
    problems = []
    for i, a in enumerate(wanted):
        for b in wanted[i + 1 :]:
            if a.port == b.port and _overlap(a.host, b.host):
                problems.append(f"{a.key} and {b.key} are both {a.port}: each server needs a port of its own")
    for listener in wanted:
        error = bind_error(listener.host, listener.port, reuse_address=listener.reuse_address)
        if error is not None:
            problems.append(f"cannot bind {listener.address} ({listener.what}, {listener.key}): {error}")
    return problems


def _overlap(a: str, b: str) -> bool:
    wildcards = {ALL_INTERFACES, "0.0.0.0", ""}
    return a == b or a in wildcards or b in wildcards


def bind_error(host: str, port: int, *, reuse_address: bool) -> str | None:
    """Why `host:port` cannot be bound now (every address `host` resolves to), or None."""
    if host == ALL_INTERFACES:
        error = _bind(socket.AF_INET6, (ALL_INTERFACES, port, 0, 0), reuse_address, dual_stack=True)
        if error is None:
            return None
        if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):  # else: no IPv6 on this host
            return _reason(error)
        error = _bind(socket.AF_INET, ("0.0.0.0", port), reuse_address)
        return None if error is None else _reason(error)
    try:
        addresses = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve {host!r}: {e.strerror}"
    for family, _, _, _, sockaddr in addresses:
        error = _bind(family, sockaddr, reuse_address)
        if error is not None:
            return _reason(error)
    return None


def _bind(family: int, sockaddr: tuple, reuse_address: bool, dual_stack: bool = False) -> OSError | None:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            if reuse_address:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if dual_stack:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(sockaddr)
    except OSError as e:
        return e
    return None


def _reason(error: OSError) -> str:
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def model_problems(config: MuseServeConfig) -> list[str]:
    problems = []
    if config.preprocess.tokenizer is not None:
        problems += _tokenizer_problems(Path(config.preprocess.tokenizer).expanduser())
    for i, pool in enumerate(config.pools):
        model = pool.model
        if model.load_format == "dummy" or model.path is None or model.path.startswith(PACKAGE_SCHEME):
            continue
        source = Path(model.path).expanduser()
        context = f"pool {pool.name}, pools[{i}].model.path"
        if model.load_format == "gguf":
            problems += _file_problems(source, f"{context}, load_format gguf")
        else:
            problems += _directory_problems(source, context)
    return problems


def _tokenizer_problems(path: Path) -> list[str]:
    file = path / "tokenizer.json" if path.is_dir() else path
    return _file_problems(file, "preprocess.tokenizer")


def _file_problems(file: Path, context: str) -> list[str]:
    if file.is_dir():
        return [f"cannot read {file} ({context}): is a directory, not a file"]
    error = _read_error(file)
    return [] if error is None else [f"cannot read {file} ({context}): {error}"]


def _directory_problems(source: Path, context: str) -> list[str]:
    """A Hugging Face directory: config.json and at least one *.safetensors file, each
    readable, and every optional file it holds readable."""
    context = f"{context}, load_format safetensors"
    try:
        names = sorted(entry.name for entry in source.iterdir())
    except NotADirectoryError:
        return [f"cannot read {source} ({context}): not a directory; this format reads a Hugging Face directory"]
    except OSError as e:
        return [f"cannot read {source} ({context}): {_reason(e)}"]
    weights = [name for name in names if name.endswith(".safetensors")]
    if not weights:
        return [f"cannot read {source} ({context}): it holds no *.safetensors file"]
    problems = []
    for name in ["config.json", *weights, *(n for n in HF_OPTIONAL_FILES if n in names)]:
        problems += _file_problems(source / name, context)
    return problems


def _read_error(file: Path) -> str | None:
    """Opening is the test: it holds for the user the replicas run as (root included)."""
    try:
        with file.open("rb"):
            return None
    except OSError as e:
        return _reason(e)
