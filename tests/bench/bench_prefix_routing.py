"""Prefix routing against Ray Serve's default power-of-two choice, in one process run: one pool
of 3 SmolLM2-135M replicas (CPU, one thread each), the `multiturn` workload open-loop with
18 tenants (`bench_workload`).

1. Capacity under the default routing: more conversations than it can serve, at most 6 turns
   in flight (2 per replica keep each busy), for `--calibrate-s`; requests answered per
   second once past the first `CALIBRATION_RAMP_S`.
2. The rate: `--load` (0.65) of that capacity, in conversations per second (a conversation
   is `mean_turns` requests).
3. Each policy in turn: the app deployed afresh (new replicas, empty caches), the workload at
   that rate for `--duration-s` (conversations starting in the first `--warmup-s` are not
   measured), each run with its own salt so neither finds the other's prompts cached.
4. Capacity under prefix routing, measured as in 1 (on its deployment, after its run): an
   open loop below capacity serves what it is offered under either policy, so the
   throughput a policy buys shows at saturation (`capacity_ratio`).
5. The router's own cost: `PrefixRouting.decide` timed in this process on prompts and an index
   of the run's sizes, and the p99 bucket of the live routers' histogram.

    python -m tests.bench.bench_prefix_routing --out .bench/prefix_routing.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

POLICIES = ("power_of_two", "prefix")
MEAN_TURNS = 4.5  # the multiturn workload's turns: uniform over 3..6


def _deploy(policy: str, grpc_port: int, http_port: int):
    from ray import serve

    from museserve.serve.app import build_app
    from tests.bench.prefix_routing_app import APP, bench_config

    config = bench_config(policy, grpc_port, http_port)
    serve.run(build_app(config), name=APP, route_prefix="/")
    return config


CALIBRATION_RAMP_S = 20.0  # the first answers of a cold pool: not yet its steady rate


TENANTS = 18  # their system prompts (about 25K tokens) outgrow one replica's cache (11,650 tokens)


def bench_workload():
    """The shipped `multiturn` workload with `TENANTS` tenant entries instead of 6: at scale the
    tenants' prefixes together outgrow any one replica's KV cache, which is where routing by
    prefix pays; with 6 (8.4K tokens) every replica ends up holding every system prompt."""
    from museserve_loadtest.workload import Tenant, load_workload

    workload = load_workload("multiturn")
    key_env = workload.tenants[0].key_env
    tenants = [Tenant(name=f"tenant-{i}", key_env=key_env, weight=1) for i in range(TENANTS)]
    return workload.model_copy(update={"tenants": tenants})


def _run(address: str, rate: float, duration_s: float, warmup_s: float, salt: str, **options) -> list:
    from museserve_loadtest.multiturn import run_conversations_blocking

    return run_conversations_blocking(address, bench_workload(), rate, duration_s, seed=11, keys={},
                                      warmup_s=warmup_s, salt=salt, **options)  # fmt: skip


def capacity_rps(samples: list, ramp_s: float, end_s: float) -> float:
    """Answers per second between `ramp_s` and `end_s` (sample times are from the run's start)."""
    done = [s for s in samples if s.ok and s.end is not None and ramp_s <= s.end <= end_s]
    return len(done) / (end_s - ramp_s)


def decision_cost(samples: int = 3000) -> dict:
    """`PrefixRouting.decide` on 3 replicas holding 2,200 blocks each (the pool's KV cache,
    11,650 tokens of 16) and prompts of 1,000 to 2,800 tokens, half of them held."""
    from museserve.routing.feed import KVBatch, KVFeed, pack
    from museserve.routing.prefix_routing import PrefixRouting, RoutingSettings
    from museserve.routing.prompt_blocks import prompt_block_hashes
    from tests.support import prepared_request

    rng = random.Random(5)
    routing = PrefixRouting(RoutingSettings(block_size=16, min_hit_tokens=64, max_load_gap=8, kv_saturation=0.95))
    prompts = [[rng.randrange(49152) for _ in range(rng.randrange(1000, 2800))] for _ in range(200)]
    requests = [prepared_request(f"r{i}", p, tenant="bench") for i, p in enumerate(prompts)]
    for replica in range(3):
        held = [h for r in requests[replica::6] for h in prompt_block_hashes(r, 16)]
        while len(held) < 2200:
            held.append(rng.randbytes(16))
        batch = KVBatch(1, time.time(), pack(held[:2200]), b"", reset=True)
        routing.observe(f"replica-{replica}", KVFeed("e", (batch,), None))
    loads = {f"replica-{i}": rng.randrange(4) for i in range(3)}
    took = []
    for i in range(samples):
        started = time.perf_counter()
        routing.decide(requests[i % len(requests)], loads)
        took.append(time.perf_counter() - started)
    took.sort()
    return {"samples": samples, "p50_us": took[len(took) // 2] * 1e6, "p99_us": took[int(len(took) * 0.99)] * 1e6,
            "index_blocks": routing.index.num_blocks}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/prefix_routing.json"))
    parser.add_argument("--calibrate-s", type=float, default=90.0)
    parser.add_argument("--duration-s", type=float, default=360.0)
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--load", type=float, default=0.65, help="Offered load as a share of default capacity.")
    args = parser.parse_args()

    import ray
    from ray import serve

    from museserve.serve.app import init_local_ray, start_serve
    from museserve_loadtest.multiturn import summarize_conversations
    from tests.bench.bench_engine import source_state
    from tests.bench.machine import machine
    from tests.bench.prefix_routing_app import (
        APP,
        bench_config,
        bucket_quantile,
        replica_requests,
        requests_since,
        router_series,
    )
    from tests.support import free_port

    started = time.perf_counter()
    grpc_port, http_port = free_port(), free_port()
    init_local_ray(bench_config("power_of_two", grpc_port, http_port))
    start_serve(bench_config("power_of_two", grpc_port, http_port))

    runs: dict[str, dict] = {}
    try:
        config = _deploy("power_of_two", grpc_port, http_port)
        address = f"127.0.0.1:{config.server.direct_grpc_port}"
        print("calibrating ...", file=sys.stderr, flush=True)
        samples = _run(address, 1.0, args.calibrate_s, 0.0, "calibration", concurrency=6, drain_timeout_s=0.0)
        capacity = {"power_of_two": capacity_rps(samples, CALIBRATION_RAMP_S, args.calibrate_s)}
        rate = args.load * capacity["power_of_two"] / MEAN_TURNS
        for policy in POLICIES:
            print(f"{policy} at {rate:.4f} conversations/s ...", file=sys.stderr, flush=True)
            config = _deploy(policy, grpc_port, http_port)
            address = f"127.0.0.1:{config.server.direct_grpc_port}"
            before = replica_requests()
            held = _run(address, rate, args.duration_s, args.warmup_s, policy, drain_timeout_s=120.0)
            counts = requests_since(before, len(held))
            summary = summarize_conversations(held, warmup_s=args.warmup_s)
            mean = sum(counts.values()) / max(len(counts), 1)
            summary["replica_requests"] = counts
            summary["max_replica_load_over_mean"] = max(counts.values()) / mean if mean else None
            if policy == "prefix":
                summary["router"] = router_series()
            runs[policy] = summary
        print("prefix capacity ...", file=sys.stderr, flush=True)
        saturated = _run(address, 1.0, args.calibrate_s, 0.0, "capacity", concurrency=6, drain_timeout_s=0.0)
        capacity["prefix"] = capacity_rps(saturated, CALIBRATION_RAMP_S, args.calibrate_s)
        serve.delete(APP)
    finally:
        serve.shutdown()
        ray.shutdown()
    ours, default = runs["prefix"], runs["power_of_two"]
    router = ours.get("router", {})
    buckets = {k.removeprefix("decision_le."): v for k, v in router.items() if k.startswith("decision_le.")}
    live_p99 = bucket_quantile(buckets, 0.99)
    cost = decision_cost()
    report = {
        "benchmark": "prefix_routing",
        "machine": machine(),
        "source": source_state(),
        "workload": {
            "name": f"multiturn, {TENANTS} tenants", "pool": "smollm2-135m x 3 replicas, 1 CPU thread each, 512 MiB KV each",
            "calibrated_capacity_rps": capacity["power_of_two"], "calibration_answers": sum(s.ok for s in samples),
            "load": args.load, "rate_conversations_per_s": rate, "rate_requests_per_s": rate * MEAN_TURNS,
            "duration_s": args.duration_s, "warmup_s": args.warmup_s,
        },
        "ttft_p50_ratio": ours["ttft_p50_s"] / default["ttft_p50_s"],
        "ttft_p90_ratio": ours["ttft_p90_s"] / default["ttft_p90_s"],
        "cached_token_share": {"prefix": ours["cached_token_share"], "power_of_two": default["cached_token_share"]},
        "throughput_ratio": ours["ok_rps"] / default["ok_rps"],
        "capacity_rps": capacity,
        "capacity_ratio": capacity["prefix"] / capacity["power_of_two"],
        "max_replica_load_over_mean": {"prefix": ours["max_replica_load_over_mean"],
                                       "power_of_two": default["max_replica_load_over_mean"]},
        "router_decision_us_p99": cost["p99_us"],
        "router_decision": {"in_process": cost, "live_histogram_p99_bucket_us": None if live_p99 is None
                            else live_p99 * 1e6},
        "runs": runs,
        "wall_s": time.perf_counter() - started,
    }  # fmt: skip
    from tests.bench.report import write_report

    write_report(args.out, report)


if __name__ == "__main__":
    main()
