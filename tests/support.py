"""Starting the real local app for integration tests and benchmarks."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from museserve.config import MuseServeConfig
from museserve.domain import Mode, SamplingParams
from museserve.messages import PreparedRequest

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_app(config: MuseServeConfig, timeout_s: float = 120) -> None:
    """Starts a local Ray node and the app; returns once gRPC health answers SERVING.
    The caller owns the node: `ray.shutdown()` tears everything down."""
    from museserve.serve.app import init_local_ray, run_app

    init_local_ray(config)
    run_app(config)
    wait_serving(f"127.0.0.1:{config.server.grpc_port}", timeout_s)


def wait_serving(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def prepared_request(request_id: str = "r", prompt: Sequence[int] = (40, 41), **overrides) -> PreparedRequest:
    """A PreparedRequest as the preprocess tier would hand it to a pool: greedy, instant,
    12 answer tokens, a deadline a minute away; any field, or field of its `sampling`, can be
    overridden."""
    sampling = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, max_output_tokens=12, repetition_penalty=1.0)
    sampling_fields = {f.name for f in dataclasses.fields(SamplingParams)}
    sampling = dataclasses.replace(sampling, **{k: v for k, v in overrides.items() if k in sampling_fields})
    fields = dict(
        request_id=request_id,
        tenant="tenant-a",
        pool="muse-test",
        prompt_token_ids=tuple(prompt),
        mode=Mode.INSTANT,
        thinking_budget=0,
        sampling=sampling,
        deadline_unix_s=time.time() + 60,
    )
    fields.update({k: v for k, v in overrides.items() if k not in sampling_fields})
    return PreparedRequest(**fields)


class _NoMediaTier:
    """Stands where the preprocess deployment would: these tests send text only."""

    async def prepare(self, request, pool):
        raise AssertionError("a text-only test reached the preprocess tier")

    async def count(self, request, pool):
        raise AssertionError("a text-only test reached the preprocess tier")


def text_preprocess(config: MuseServeConfig):
    """The gateway's own in-process preprocessing (text only), as tests without Ray use it."""
    from museserve.gateway.inline_preprocess import InlineTextPreprocess

    return InlineTextPreprocess(config, _NoMediaTier())


def replica_actor_names(deployment: str) -> list[str]:
    """Names of the live Serve replica actors of `deployment` (Ray must be initialised)."""
    import ray

    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]
    ]


def kill_replica(deployment: str) -> float:
    """Kills a replica of `deployment` as a crash would (no restart by Ray: Serve notices
    and starts a new one); returns `time.monotonic()` of the kill."""
    import ray

    name = sorted(replica_actor_names(deployment))[0]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return time.monotonic()


def eventually(condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Waits for `condition`; the test fails if it does not hold within `timeout_s` (a liveness
    bound, not a speed claim)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout_s} s")
        time.sleep(poll_s)


def call_within(timeout_s: float, fn: Callable[..., T], *args: object) -> T:
    """fn(*args), or the test fails if it has not returned after `timeout_s` (a liveness bound,
    not a speed claim). It runs on a daemon thread, so a hung call cannot hold the test run."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return within {timeout_s} s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
