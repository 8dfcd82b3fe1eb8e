"""A step of open-loop load on one autoscaled pool, deployed as an app of its own beside
whatever else runs in the Ray cluster (tests/integration/test_autoscaling.py,
tests/bench/bench_autoscale.py)."""

from __future__ import annotations

import asyncio
import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from museserve.config import MuseServeConfig, PoolConfig, parse_config
from museserve.preprocess.pool_model import check_pools
from tests.support import prepared_request

POOL = "muse-scale"
DEPLOYMENT = f"pool-{POOL}"

# Short enough for a test on 2 cores: a step is seen within a second or two, and a quiet pool
# comes back down a few seconds after the step.
FAST_SCALING = {
    "min_replicas": 1,
    "max_replicas": 2,
    "upscale_delay_s": 1.0,
    "downscale_delay_s": 3.0,
    "cooldown_s": 2.0,
    "look_back_s": 2.0,
    "metrics_push_interval_s": 0.5,
    "waiting_per_replica": 1.0,
}


def step_config(
    base: MuseServeConfig, app_name: str, autoscaling: dict | None, num_replicas: int = 1
) -> MuseServeConfig:
    """`base` with one small dummy-weights pool that runs one request at a time (the rest wait)."""
    data = base.model_dump(mode="json")
    data["app_name"] = app_name
    data["pools"] = [
        {
            "name": POOL,
            "modes": ["instant"],
            # One core per replica: a second replica has the other core to itself (two replicas of
            # all cores each would contend for both).
            "model": {"size": "tiny", "load_format": "dummy", "seed": 3, "cpu_threads": 1},
            "engine": {"context_length": 512, "max_output_tokens": 64, "default_max_output_tokens": 32, "max_running_requests": 1,
                       "kv_cache_bytes": 8 << 20, "stream_interval_ms": 0},
            "deployment": {"num_replicas": num_replicas, "max_ongoing_requests": 64, "num_cpus": 0,
                           "autoscaling": autoscaling},
        }
    ]  # fmt: skip
    for key in ("ab", "mirror"):
        data["pools"][0].pop(key, None)
    data["gateway"]["default_model"] = POOL
    data["gateway"]["routes"] = {}
    data["gateway"]["tenants"] = {}  # their adapters are the shared app's real pool's
    return check_pools(parse_config(data, source="step config"))


def deploy(config: MuseServeConfig) -> PoolConfig:
    """Runs the pool as app `config.app_name` (Serve must be running); returns the pool."""
    from ray import serve

    from museserve.serve.app import bind_pool

    (pool,) = config.pools
    serve.run(bind_pool(pool, config), name=config.app_name, route_prefix=None)
    return pool


def running_replicas(app_name: str) -> int:
    from ray import serve

    status = serve.status().applications[app_name].deployments[DEPLOYMENT]
    return int(status.replica_states.get("RUNNING", 0))


@dataclass
class Outcome:
    ok: bool
    sent_at: float
    ttft_s: float | None
    error: str = ""


async def _one(handle, i: int, tokens: int) -> Outcome:
    sent = time.monotonic()
    first = None
    try:
        # A deadline well past the step: a backlog the new replica helps drain is not a loss.
        request = prepared_request(f"step-{i}-{time.time_ns()}", prompt=tuple(range(40, 72)), pool=POOL,
                                   max_output_tokens=tokens, deadline_unix_s=time.time() + 180)  # fmt: skip
        finished = False
        async for chunk in handle.generate.remote(request):
            if first is None and chunk.num_new_tokens:
                first = time.monotonic() - sent
            finished = finished or chunk.finish is not None
        return Outcome(finished, sent, first, "" if finished else "no finish")
    except Exception as e:  # a lost request: counted, never raised
        return Outcome(False, sent, first, repr(e))


async def open_loop(app_name: str, rate_per_s: float, stop: Callable[[float], bool], tokens: int = 48) -> list[Outcome]:
    """Sends a request every 1/rate_per_s seconds, whatever the answers do, until `stop(elapsed)`;
    returns once every request sent has ended."""
    from ray import serve

    handle = serve.get_deployment_handle(DEPLOYMENT, app_name=app_name).options(stream=True)
    started = time.monotonic()
    tasks = []
    i = 0
    while not stop(time.monotonic() - started):
        tasks.append(asyncio.create_task(_one(handle, i, tokens)))
        i += 1
        await asyncio.sleep(max(0.0, started + i / rate_per_s - time.monotonic()))
    return list(await asyncio.gather(*tasks))


def decision_lines(deployment: str = DEPLOYMENT) -> list[str]:
    """The policy's decisions, from the Serve controller's log in this Ray session."""
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    lines = []
    for path in glob.glob(os.path.join(session, "logs", "serve", "controller_*.log")):
        with open(path, errors="replace") as f:
            lines += [line for line in f if f"museserve autoscaling {deployment}:" in line]
    return lines


def p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
