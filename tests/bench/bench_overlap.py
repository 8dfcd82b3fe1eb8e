"""Overlap scheduling against one step at a time, same engine config and workload, one process.

For each model (the seeded dummy `tiny` and `small`, and SmolLM2-135M-Instruct, the default
pool's GGUF; `--models` picks), the workload of `bench_engine` (greedy, end tokens ignored,
prompts of 32-512 tokens, outputs of 16-256) runs through `MuseEngine` with
`engine.overlap_scheduling` off and on, in alternating rounds (`--rounds`, off first), each
on a fresh engine after a short warm-up; an untimed round of 8 requests comes first, so
neither side pays the process's one-time costs. Reported per model:

- `overlap_speedup`: median output tokens/s with overlap over the median without.
- X
  scheduling, sampling bookkeeping, detokenizing and streaming) when steps do not overlap:
  the most overlap can win back.
- `identical_outputs`: every request's text and token count were the same in every round.

    python -m tests.bench.bench_overlap --out .bench/overlap.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import torch

from museserve.config import MediaLimits, PoolConfig
from museserve.preprocess.pool_model import pool_model
from museserve.replica import build_engine
from tests.bench.bench_engine import make_workload, source_state
from tests.bench.engine_side import bench_ours
from tests.bench.hf_baseline import Job
from tests.bench.machine import machine
from tests.real_model import SMOLLM2_GGUF

MODELS = {
    "tiny": {"size": "tiny", "seed": 0},
    "small": {"size": "small", "seed": 0},
    "smollm2": {"load_format": "gguf", "path": SMOLLM2_GGUF},
}


def pool_config(model: dict, device: str, overlap: bool, concurrency: int) -> PoolConfig:
    return PoolConfig(
        name="bench",
        model={**model, "device": device},
        engine={
            "context_length": 4096,
            "max_output_tokens": 1024,
            "default_max_output_tokens": 256,
            "max_running_requests": concurrency,
            "max_waiting_requests": 256,
            "max_batched_tokens": 2048,
            "max_prefill_chunk": 512,
            "block_size": 16,
            "kv_cache_bytes": 1280 << 20,
            "stream_interval_ms": 0,
            "overlap_scheduling": "on" if overlap else "off",
        },
    )


def one_round(pool: PoolConfig, jobs: list[Job], warmup: list[Job], concurrency: int) -> dict:
    chat_format = pool_model(pool, MediaLimits()).chat_format
    engine = build_engine(pool, chat_format)

    async def run() -> tuple:
        try:
            return await bench_ours(engine, pool, jobs, warmup, concurrency, None, 0)
        finally:
            engine.shutdown(wait=True)

    outcomes, wall, steps, _ = asyncio.run(run())
    tokens = sum(o.output_tokens for o in outcomes)
    return {
        "output_tokens_per_s": tokens / wall,
        "wall_s": wall,
        "steps": len(steps),
        "device_busy_fraction": sum(s for s, _, _ in steps) / wall,
        "outputs": [(o.text, o.output_tokens) for o in outcomes],
    }


def bench_model(name: str, args: argparse.Namespace) -> dict:
    base = pool_config(MODELS[name], args.device, False, args.concurrency)
    tokenizer = pool_model(base, MediaLimits()).chat_format.tokenizer
    ids = (max(tokenizer.control_ids, default=-1) + 1, tokenizer.vocab_size)
    jobs = make_workload(args.seed, args.requests, ids)
    warmup = [Job(j.prompt[:32], 4) for j in make_workload(args.seed + 7, 2, ids)]
    one_round(base, jobs[:8], warmup, args.concurrency)  # untimed: the process's first-use costs
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for _ in range(args.rounds):
        for overlap in (False, True):
            pool = pool_config(MODELS[name], args.device, overlap, args.concurrency)
            runs[overlap].append(one_round(pool, jobs, warmup, args.concurrency))
    reference = runs[False][0]["outputs"]
    identical = all(r["outputs"] == reference for rs in runs.values() for r in rs)
    rate = {overlap: statistics.median(r["output_tokens_per_s"] for r in rs) for overlap, rs in runs.items()}
    return {
        "overlap_speedup": rate[True] / rate[False],
        "output_tokens_per_s": {"overlap": rate[True], "one_step_at_a_time": rate[False]},
        "model_idle_fraction_without_overlap": 1 - statistics.median(r["device_busy_fraction"] for r in runs[False]),
        "identical_outputs": identical,
        "rounds": {
            ("overlap" if overlap else "one_step_at_a_time"): [
                {k: v for k, v in r.items() if k != "outputs"} for r in rs
            ]
            for overlap, rs in runs.items()
        },
        "requests": args.requests,
        "output_tokens": sum(n for _, n in reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/overlap.json"))
    parser.add_argument("--models", default="tiny,small,smollm2", help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs per model")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report: dict = {"benchmark": "overlap_scheduling"}
    for name in args.models.split(","):
        report[name] = bench_model(name, args)
    report |= {"machine": machine(), "source": source_state(), "bench_wall_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({name: report[name]["overlap_speedup"] for name in args.models.split(",")}, indent=2))


if __name__ == "__main__":
    main()
