"""Our engine against Hugging Face transformers on the same weights, one process, one run, for
two models:

- the seeded dummy `--size` model (default `small`): the top-level keys, as before;
- `real_model`: SmolLM2-135M-Instruct, the default pool's GGUF, dequantized to float32
  (`--skip-real-model` leaves it out).

Both sides of a comparison hold the same weights: our `MuseEngine` builds them from its
PoolConfig, and the same state_dict is loaded into transformers' `LlamaForCausalLM` (its
default attention), on the same device (`--device`: auto, cpu or cuda) in the same dtype
(`--dtype`: float32, or bfloat16 on cuda; the real model runs in float32). Both use the same
number of torch threads and the same attention kernels (PyTorch's SDPA without cuDNN's, which
plans anew for each sequence length). On cuda every clock is read after the device has
finished its queued work. On a CPU our linear layers run on oneDNN with weights packed at load
(`--cpu-gemm`, the pool's `model.cpu_gemm`; `torch` measures ours on PyTorch's matmul, as
transformers runs).

Workload (seeded, the same for both models): `--requests` requests (64), prompts of uniform
32-512 random ordinary token ids (no special token), outputs of uniform 16-256 tokens, greedy,
end tokens ignored on both sides, so each request generates exactly its budget.

- Ours: all requests submitted at once through a semaphore of `--concurrency` (32), each
  with its own max_output_tokens. TTFT is the time from calling `generate` (after the
  semaphore lets the request in) to the first chunk carrying text or tokens.
- Hugging Face, with each batching transformers offers (`--hf-batching`, default both; see
  `hf_baseline`): its own `generate` on left-padded batches of `--concurrency` requests, and
  its continuous-batching manager.

`throughput_ratio_vs_hf` = our output tokens/s over Hugging Face's with the faster of its
batchings (`hf.baseline`), wall clock of the whole workload on each side.
`greedy_text_agreement` (real model): requests whose streamed text equals the decoded
transformers tokens, over requests. `prefix_ttft_ratio` (dummy model): TTFT of a second turn
that extends a finished first turn's 2048-token prompt, over TTFT of a cold prompt of the same
length (same tenant, engine otherwise idle); lower is better. `machine.cpu` names the CPU and
its instruction sets: the same bench gave 3.76x on an AVX-512 EPYC and 1.99x on an AVX2-only one.

    python -m tests.bench.bench_engine --out .bench/engine.json
    python -m tests.bench.bench_engine --device cuda --dtype bfloat16 --size 1b --out .bench/engine_cuda.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import time
from pathlib import Path

import torch

from museserve.config import MediaLimits, PoolConfig
from museserve.metrics import InMemoryMetrics
from museserve.model.config import MuseConfig
from museserve.model.cpu_linear import CPU_GEMMS
from museserve.model.loader import resolve_device
from museserve.preprocess.pool_model import pool_model
from museserve.replica import build_engine
from museserve.runner.kv_pool import SDPA_BACKENDS
from tests.bench.engine_side import bench_ours, cuda_graphs_used, linear_layers
from tests.bench.hf_baseline import BATCHINGS, HFRun, Job, run_batchings
from tests.bench.machine import machine
from tests.real_model import SMOLLM2_GGUF

PROMPT_TOKENS = (32, 512)
OUTPUT_TOKENS = (16, 256)


def make_workload(seed: int, num_requests: int, ids: tuple[int, int]) -> list[Job]:
    """`ids`: randrange bounds of the model's ordinary token ids (no special token)."""
    rng = random.Random(seed)
    jobs = []
    for _ in range(num_requests):
        prompt_len = rng.randint(*PROMPT_TOKENS)
        output_len = rng.randint(*OUTPUT_TOKENS)
        jobs.append(Job([rng.randrange(*ids) for _ in range(prompt_len)], output_len))
    return jobs


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def pool_config(args: argparse.Namespace, model: dict, kv_cache_mib: int) -> PoolConfig:
    return PoolConfig(
        name="bench",
        model={**model, "device": args.device, "cpu_gemm": args.cpu_gemm},
        engine={
            "context_length": 4096,
            "max_output_tokens": 1024,
            "default_max_output_tokens": 256,
            "max_running_requests": args.concurrency,
            "max_waiting_requests": max(256, args.requests),
            "max_batched_tokens": args.max_batched_tokens,
            "max_prefill_chunk": args.max_prefill_chunk,
            "block_size": 16,
            "kv_cache_bytes": kv_cache_mib << 20,
            "stream_interval_ms": 0,
        },
    )


def compare(pool: PoolConfig, args: argparse.Namespace, with_prefix: bool) -> dict:
    """Ours, then transformers with each batching, on `pool`'s weights; the comparison's report."""
    chat_format = pool_model(pool, MediaLimits()).chat_format
    tokenizer = chat_format.tokenizer
    ids = (max(tokenizer.control_ids, default=-1) + 1, tokenizer.vocab_size)
    jobs = make_workload(args.seed, args.requests, ids)
    warmup = [Job(j.prompt[:32], 4) for j in make_workload(args.seed + 7, 2, ids)]
    metrics = InMemoryMetrics()
    engine = build_engine(pool, chat_format, metrics=metrics)
    model = engine.runner.executor.model

    async def ours_then_stop() -> tuple:
        try:
            return await bench_ours(
                engine, pool, jobs, warmup, args.concurrency, ids if with_prefix else None, args.seed
            )
        finally:
            engine.shutdown(wait=True)  # its device thread ends before Hugging Face starts (see hf_baseline)

    outcomes, ours_wall, steps, prefix = asyncio.run(ours_then_stop())
    batchings = BATCHINGS if args.hf_batching == "both" else (args.hf_batching,)
    hf, hf_runs = run_batchings(model, jobs, warmup, batchings, args.concurrency, args.max_batched_tokens)
    finished = {name: run for name, run in hf_runs.items() if isinstance(run, HFRun)}
    if not finished:
        raise RuntimeError(f"no Hugging Face batching finished: {hf_runs}")
    baseline = min(finished, key=lambda name: finished[name].wall_s)
    hf_outputs, hf_wall = finished[baseline].outputs, finished[baseline].wall_s

    def same_text(outputs: list[list[int]]) -> int:
        return sum(
            1
            for outcome, tokens in zip(outcomes, outputs, strict=True)
            if outcome.output_tokens == len(tokens) and outcome.text == tokenizer.decode(tokens)
        )

    ours_tokens = sum(o.output_tokens for o in outcomes)
    hf_tokens = sum(len(t) for t in hf_outputs)
    ttfts = [o.ttft_s for o in outcomes]
    step_s = [s for s, _, _ in steps]
    config, dtype = model.config, getattr(torch, pool.model.dtype)
    report = {
        "throughput_ratio_vs_hf": (ours_tokens / ours_wall) / (hf_tokens / hf_wall),
        "greedy_text_agreement": same_text(hf_outputs) / len(jobs),
        "ttft_p50_s": percentile(ttfts, 0.5),
        "device": str(next(model.parameters()).device),
        "dtype": pool.model.dtype,
        "ours": {
            "output_tokens_per_s": ours_tokens / ours_wall,
            "ttft_p50_s": percentile(ttfts, 0.5),
            "ttft_p99_s": percentile(ttfts, 0.99),
            "ttft_max_s": max(ttfts),
            "latency_p50_s": percentile([o.latency_s for o in outcomes], 0.5),
            "wall_s": ours_wall,
            "output_tokens": ours_tokens,
            "finish_reasons": {
                r: sum(1 for o in outcomes if o.finish == r) for r in sorted({o.finish for o in outcomes})
            },
            "steps": len(steps),
            "model_time_s": sum(step_s),
            "model_time_fraction_of_wall": sum(step_s) / ours_wall,
            "step_s_p50": percentile(step_s, 0.5) if step_s else None,
            "counted": "sum of usage.output_tokens of each request's final chunk (tokens actually generated)",
            "cuda_graphs": cuda_graphs_used(engine),
            "linear_layers": linear_layers(model),
            "engine_metrics": {
                "generation_tokens": metrics.generation_tokens,
                "prompt_tokens": metrics.prompt_tokens,
                "prefix_hit_tokens": metrics.prefix_hits,
                "note": "the engine's own recorder over the whole run: warm-up, workload and prefix turns",
            },
        },
        "hf": {
            "baseline": baseline,
            "output_tokens_per_s": hf_tokens / hf_wall,
            "wall_s": hf_wall,
            "output_tokens": hf_tokens,
            "batchings": {
                name: {"error": run}
                if isinstance(run, str)
                else {
                    "output_tokens_per_s": sum(len(t) for t in run.outputs) / run.wall_s,
                    "wall_s": run.wall_s,
                    "generated_tokens_incl_padding_waste": run.generated_tokens,
                    "requests_with_our_text": same_text(run.outputs),
                }
                for name, run in hf_runs.items()
            },
            "counted": "each request's requested max_output_tokens (generated exactly: no end token); "
            "tokens a padded batch generates past a request's own length are not counted",
            "attn_implementation": hf.config._attn_implementation,
            "linear_layers": linear_layers(hf),
            "sdpa_backends": [backend.name for backend in SDPA_BACKENDS],
        },
        "requests_with_identical_text": same_text(hf_outputs),
        "kv_bytes_per_token": config.kv_cache_bytes_per_token(torch.finfo(dtype).bits // 8),
        "model": {
            "source": pool.model.path or f"dummy {pool.model.size}",
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "vocab_size": config.vocab_size,
            "tied_embeddings": config.tie_word_embeddings,
        },
        "workload": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "prompt_tokens_uniform": list(PROMPT_TOKENS),
            "output_tokens_uniform": list(OUTPUT_TOKENS),
            "token_ids": list(ids),
            "prompt_tokens_total": sum(len(j.prompt) for j in jobs),
            "requested_output_tokens_total": sum(j.max_output_tokens for j in jobs),
            "seed": args.seed,
            "greedy": True,
            "end_tokens_ignored": True,
        },
        "engine_config": {
            k: getattr(pool.engine, k)
            for k in ("max_running_requests", "max_batched_tokens", "max_prefill_chunk", "block_size", "kv_cache_bytes")
        },
    }
    if prefix is not None:
        report |= {"prefix_cache": prefix, "prefix_ttft_ratio": prefix["prefix_ttft_ratio"]}
    return report


def source_state() -> dict:
    """The commit measured, and which files under platform/ differed from it."""
    root = Path(__file__).resolve().parents[2]

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "modified": git("status", "--porcelain", "platform").splitlines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/engine.json"))
    parser.add_argument("--size", default="small", choices=MuseConfig.named_sizes()[:3])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="both sides")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="both sides (dummy)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32, help="our semaphore and running cap; HF batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-prefill-chunk", type=int, default=512)
    parser.add_argument("--kv-cache-mib", type=int, default=512, help="the dummy model's KV cache")
    parser.add_argument("--real-kv-cache-mib", type=int, default=1280, help="the real model's (46 KB a token)")
    parser.add_argument("--cpu-gemm", default="onednn", choices=CPU_GEMMS, help="our linear layers on a CPU")
    parser.add_argument("--skip-prefix", action="store_true", help="leave out the prefix-cache TTFT measurement")
    parser.add_argument("--skip-real-model", action="store_true", help="leave out the SmolLM2 comparison")
    parser.add_argument("--hf-batching", default="both", choices=("both", *BATCHINGS), help="what HF runs")
    args = parser.parse_args()
    if args.dtype != "float32" and resolve_device(args.device).type != "cuda":
        parser.error("--dtype bfloat16 runs on cuda only")

    import transformers

    torch.set_num_threads(args.threads)
    bench_start = time.perf_counter()
    dummy = pool_config(args, {"size": args.size, "seed": args.seed, "dtype": args.dtype}, args.kv_cache_mib)
    report = {"benchmark": "engine_vs_hf", **compare(dummy, args, with_prefix=not args.skip_prefix)}
    if not args.skip_real_model:
        real = pool_config(
            args, {"load_format": "gguf", "path": SMOLLM2_GGUF, "dtype": "float32"}, args.real_kv_cache_mib
        )
        report["real_model"] = compare(real, args, with_prefix=False)
    report |= {
        "machine": machine(),
        "transformers": transformers.__version__,
        "notes": [
            "one process, one run per model: ours first (then the prefix-cache turns), then Hugging Face, padded "
            "batches then continuous batching; each gets a short warm-up first",
            "ours ttft: from calling generate (after the semaphore admits the request) to the first chunk "
            "with text or tokens; the first wave of requests waits for the prefill of those ahead of it",
            "step and model times come from wrapping the engine's executor; model_time excludes the loop's "
            "scheduling, sampling and detokenizing",
        ],
        "source": source_state(),
        "bench_wall_s": time.perf_counter() - bench_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
