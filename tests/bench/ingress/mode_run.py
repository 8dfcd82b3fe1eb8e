"""One mode of the ingress bench, in its own process: start the app, measure every path, stop."""

from __future__ import annotations

import os
import time

from tests.bench.ingress.cancels import bench_cancels, gateway_ended, replica_museserve_path
from tests.bench.ingress.errors import PROBE_APP, bench_errors, bench_probe, probe_app
from tests.bench.ingress.latency import bench_latency
from tests.bench.ingress.modes import MODES, SMALL, bench_config, haproxy_pids, open_path, path_address, start_app


def run_mode(mode: str, requests: int) -> dict:
    import ray
    from ray import serve

    from museserve.serve.drain_board import start_drain
    from tests.redis_server import RedisServer
    from tests.support import wait_serving

    extra_env, servicers, paths = MODES[mode]
    result: dict = {"ray_env": extra_env, "servicer_registration": servicers, "paths": {}}
    started = time.perf_counter()
    result["load_average_at_start"] = os.getloadavg()
    with RedisServer() as redis:
        config = bench_config(redis.url)
        try:
            t0 = time.perf_counter()
            start_app(config, servicers)
            wait_serving(f"127.0.0.1:{config.server.grpc_port}", 120)
            result["start_s"] = time.perf_counter() - t0
            result["haproxy_pids_while_serving"] = haproxy_pids()
            clients, addresses = {}, {}
            for path in paths:
                try:
                    addresses[path] = path_address(path, config)
                    clients[path] = open_path(addresses[path])
                    result["paths"][path] = {"address": addresses[path]}
                except Exception as e:
                    result["paths"][path] = {"error": f"{type(e).__name__}: {e}"}
            result["museserve_in_replica"] = replica_museserve_path(f"pool-{SMALL}")

            latency = bench_latency(clients, requests)
            for path in clients:
                result["paths"][path]["latency"] = latency[path]
                result["paths"][path]["errors"] = bench_errors(addresses[path])
            for path in clients:
                result["paths"][path]["cancel"] = bench_cancels(addresses[path], config.app_name, path)
            result["gateway_ended_since_first_cancel_round"] = gateway_ended()

            probe_paths = [path for path in clients if path != "direct_port"]
            if probe_paths:
                serve.run(probe_app(), name=PROBE_APP, route_prefix="/status-probe")
                for path in probe_paths:
                    result["paths"][path]["stream_status_probe"] = bench_probe(path, config)
            for client in clients.values():
                client.close()
            t0 = time.perf_counter()
            if probe_paths:
                serve.delete(PROBE_APP, _blocking=False)  # stops beside the main app, not after it
            # `serve.app.drain_app`, timed in two parts.
            start_drain(config.app_name)
            serve.delete(config.app_name, _blocking=True)
            result["app_drain_and_delete_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            serve.shutdown()
            result["serve_shutdown_s"] = time.perf_counter() - t0
        finally:
            ray.shutdown()
    result["wall_s"] = time.perf_counter() - started
    result["load_average_at_end"] = os.getloadavg()
    return result
