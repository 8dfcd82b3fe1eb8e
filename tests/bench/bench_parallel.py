"""Step time and memory per worker of one model replica: TP=1 (in this process, and as one
Ray worker, the fair baseline for the others), TP=2 and PP=2 (Ray workers), on the same
seeded dummy weights (`--size`, default `small`). Ratios are against the in-process TP=1.

Each layout runs the same plans straight through its executor (no scheduler, no sampling):
a prefill step of `--batch` sequences x `--prompt` tokens, then decode steps of the same
sequences one token each (contexts of `--prompt` tokens and up). Times are medians over
`--repeats` steps after one warm-up step. Memory per worker: weight and KV cache bytes it
holds, and its peak resident set (torch, Ray and DeepSpeed included).

On a 2-core CPU machine no speed-up is expected: tensor parallel adds two all-reduces per
layer and splits already-small matmuls; pipeline stages overlap only across micro-batches,
and Ray moves the hidden states between processes. CPU TP/PP is for correctness; the speed
case is GPUs with NCCL. The JSON says so in `note`.

    python -m tests.bench.bench_parallel --out .bench/parallel.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import ray

from museserve.config import PoolConfig
from museserve.engine.plan import ScheduledSequence, SchedulerPlan
from museserve.model.config import MuseConfig
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.runner.loading import local_runner, pool_architecture
from tests.bench.machine import machine

# name: (tensor, pipeline, on Ray workers)
LAYOUTS = {"tp1": (1, 1, False), "tp1_worker": (1, 1, True), "tp2": (2, 1, True), "pp2": (1, 2, True)}
BLOCK = 16


def pool(args: argparse.Namespace, tensor: int, pipeline: int) -> PoolConfig:
    engine = {"block_size": BLOCK, "kv_cache_bytes": args.kv_cache_mib << 20, "max_batched_tokens": 8192}
    engine |= {"max_prefill_chunk": 8192, "context_length": 8192, "max_output_tokens": 1024}
    parallel = {"tensor": tensor, "pipeline": pipeline}
    return PoolConfig(name="bench", model={"size": args.size, "device": "cpu"}, engine=engine, parallel=parallel)


def plans(args: argparse.Namespace) -> tuple[SchedulerPlan, list[SchedulerPlan]]:
    blocks_each = -(-(args.prompt + args.repeats + 1) // BLOCK)
    tables = [tuple(range(i * blocks_each, (i + 1) * blocks_each)) for i in range(args.batch)]
    prefill = SchedulerPlan(
        tuple(ScheduledSequence(f"s{i}", 0, (40 + i,) * args.prompt, t, True) for i, t in enumerate(tables)), ()
    )
    decodes = [
        SchedulerPlan(
            tuple(ScheduledSequence(f"s{i}", args.prompt + k, (50,), t, True) for i, t in enumerate(tables)), ()
        )
        for k in range(args.repeats + 1)
    ]
    return prefill, decodes


def timed(executor, plan: SchedulerPlan) -> float:
    started = time.perf_counter()
    executor.execute(plan)
    return time.perf_counter() - started


def measure(executor, args: argparse.Namespace) -> dict:
    prefill, decodes = plans(args)
    prefill_s = [timed(executor, prefill) for _ in range(args.repeats + 1)][1:]  # rewrites the same slots
    decode_s = [timed(executor, plan) for plan in decodes][1:]
    return {
        "prefill_step_ms": round(statistics.median(prefill_s) * 1000, 2),
        "decode_step_ms": round(statistics.median(decode_s) * 1000, 2),
        "prefill_tokens_per_step": args.batch * args.prompt,
        "decode_tokens_per_step": args.batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/parallel.json"))
    parser.add_argument("--size", default="small", choices=MuseConfig.named_sizes()[:2])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kv-cache-mib", type=int, default=64)
    args = parser.parse_args()
    tokenizer = MuseTokenizer.load(None)
    ray.init(include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for name, (tensor, pipeline, on_ray) in LAYOUTS.items():
            config = pool(args, tensor, pipeline)
            started = time.monotonic()
            if not on_ray:
                executor = local_runner(config, tokenizer.vocab_size)
                weights = sum(p.numel() * p.element_size() for p in executor.model.parameters())
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                memory = [{"worker": "driver", "weight_bytes": weights, "kv_cache_bytes": executor.pool.num_bytes}]
                memory[0]["max_rss_bytes"] = rss
            else:
                from museserve.parallel.executor import RayExecutor

                executor = RayExecutor(config, pool_architecture(config, tokenizer.vocab_size))
                memory = executor.memory()
            start_s = time.monotonic() - started
            results[name] = {"tensor": tensor, "pipeline": pipeline, "start_s": round(start_s, 2)}
            results[name] |= measure(executor, args) | {"memory_per_worker": memory}
            if hasattr(executor, "shutdown"):
                executor.shutdown()
            print(name, json.dumps({k: v for k, v in results[name].items() if k != "memory_per_worker"}))
    finally:
        ray.shutdown()
    base = results["tp1"]
    for name in ("tp1_worker", "tp2", "pp2"):
        for kind in ("prefill", "decode"):
            results[name][f"{kind}_speedup_vs_tp1"] = round(
                base[f"{kind}_step_ms"] / results[name][f"{kind}_step_ms"], 3
            )
    report = {
        "bench": "parallel",
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "note": "CPU, float32, gloo: no speed-up is expected on 2 cores. TP pays two all-reduces per layer on "
        "matmuls already too small to split; PP overlaps only its 2 micro-batches and moves hidden states "
        "through Ray. CPU TP/PP proves correctness and memory split; speed comes with GPUs and NCCL.",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("note",)}, indent=2))


if __name__ == "__main__":
    main()
