"""Our engine against Hugging Face transformers on the same weights, one process, one run.

Both sides hold the same seeded dummy weights (`--size`, default `small`): our `MuseEngine`
builds them from its PoolConfig, and the same state_dict is loaded into transformers'
`LlamaForCausalLM` (its default attention), on the same device (`--device`: auto, cpu or cuda)
in the same dtype (`--dtype`: float32, or bfloat16 on cuda). Both use the same number of torch
threads, and the same attention kernels (PyTorch's SDPA without cuDNN's, which plans anew for
each sequence length). On cuda every clock is read after the device has finished its queued work.
On a CPU our linear layers run on oneDNN with weights packed at load (`--cpu-gemm`, the pool's
`model.cpu_gemm`; `torch` measures ours on PyTorch's matmul, as transformers runs).

Workload (seeded): `--requests` requests (64), prompts of uniform 32-512 random ordinary
token ids (32..7999, no control tokens), outputs of uniform 16-256 tokens, greedy.

- Ours: all requests submitted at once through a semaphore of `--concurrency` (32), each
  with its own max_output_tokens. TTFT is the time from calling `generate` (after the
  semaphore lets the request in) to the first chunk carrying text or tokens. The engine
  ends a request early if greedy decoding produces an end token, so output tokens are
  counted from each request's final `usage.output_tokens`.
- Hugging Face, with each batching transformers offers (`--hf-batching`, default both; see
  `hf_baseline`): its own `generate` on left-padded batches of `--concurrency` requests, and
  its continuous-batching manager. Greedy, nothing stops early; only each request's
  requested tokens count as output.

`throughput_ratio_vs_hf` = our output tokens/s over Hugging Face's with the faster of its
batchings (`hf.baseline`), wall clock of the whole workload on each side. `prefix_ttft_ratio`:
TTFT of a second turn that extends a finished first turn's 2048-token prompt, over TTFT of a
cold prompt of the same length (same tenant, engine otherwise idle); lower is better.

    python -m tests.bench.bench_engine --out .bench/engine.json
    python -m tests.bench.bench_engine --device cuda --dtype bfloat16 --size 1b --out .bench/engine_cuda.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from museserve.config import PoolConfig
from museserve.domain import Mode
from museserve.engine.engine import MuseEngine
from museserve.engine.kv_pool import SDPA_BACKENDS
from museserve.messages import PreparedRequest
from museserve.metrics import InMemoryMetrics
from museserve.model import MuseConfig
from museserve.model.cpu_linear import CPU_GEMMS, PackedLinear
from museserve.model.loader import resolve_device
from museserve.preprocess.tokenizer import MuseTokenizer
from tests.bench.hf_baseline import BATCHINGS, HFRun, Job, run_batchings, synchronize

PROMPT_TOKENS = (32, 512)
OUTPUT_TOKENS = (16, 256)
ORDINARY_IDS = (32, 8000)  # randrange bounds: no control token ids
PREFIX_TOKENS = 2048
PREFIX_SUFFIX_TOKENS = 64
PREFIX_REPEATS = 3
TENANT = "bench"


@dataclass
class Outcome:
    ttft_s: float
    latency_s: float
    output_tokens: int
    finish: str
    text: str
    cached_tokens: int


def make_workload(seed: int, num_requests: int) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for _ in range(num_requests):
        prompt_len = rng.randint(*PROMPT_TOKENS)
        output_len = rng.randint(*OUTPUT_TOKENS)
        jobs.append(Job([rng.randrange(*ORDINARY_IDS) for _ in range(prompt_len)], output_len))
    return jobs


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def pool_config(args: argparse.Namespace) -> PoolConfig:
    return PoolConfig(
        name="bench",
        model={
            "size": args.size,
            "seed": args.seed,
            "dtype": args.dtype,
            "device": args.device,
            "cpu_gemm": args.cpu_gemm,
        },
        engine={
            "context_length": 4096,
            "max_output_tokens": 1024,
            "default_max_output_tokens": 256,
            "max_running_requests": args.concurrency,
            "max_waiting_requests": max(256, args.requests),
            "max_batched_tokens": args.max_batched_tokens,
            "max_prefill_chunk": args.max_prefill_chunk,
            "block_size": 16,
            "kv_cache_bytes": args.kv_cache_mib << 20,
            "stream_interval_ms": 0,
        },
    )


# -- our engine ------------------------------------------------------------------------


class _TimedExecutor:
    """Passes steps through to the engine's executor and records how long each took."""

    def __init__(self, inner, device: torch.device):
        self.inner = inner
        self.device = device
        self.num_blocks = inner.num_blocks
        self.steps: list[tuple[float, int, int]] = []  # (seconds, sequences, tokens)

    def execute(self, plan):
        start = time.perf_counter()
        logits = self.inner.execute(plan)
        synchronize(self.device)  # the runner already waits; this keeps the timing honest if it stops
        self.steps.append((time.perf_counter() - start, len(plan.sequences), plan.num_batched_tokens))
        return logits


def prepared(pool: PoolConfig, prompt: list[int], max_output_tokens: int, tenant: str = TENANT) -> PreparedRequest:
    return PreparedRequest(
        request_id=uuid.uuid4().hex,
        tenant=tenant,
        pool=pool.name,
        prompt_token_ids=tuple(prompt),
        mode=Mode.INSTANT,
        thinking_budget=0,
        max_output_tokens=max_output_tokens,
        temperature=0.0,
        top_p=1.0,
        top_k=0,
        seed=0,
        stop=(),
        deadline_unix_s=time.time() + 3600,
    )


async def run_one(engine: MuseEngine, request: PreparedRequest) -> Outcome:
    start = time.perf_counter()
    first = None
    text: list[str] = []
    async for chunk in engine.generate(request):
        if first is None and (chunk.text or chunk.num_new_tokens):
            first = time.perf_counter()
        text.append(chunk.text)
        if chunk.finish is not None:
            end = time.perf_counter()
            return Outcome(
                ttft_s=(first if first is not None else end) - start,
                latency_s=end - start,
                output_tokens=chunk.usage.output_tokens,
                finish=str(chunk.finish),
                text="".join(text),
                cached_tokens=chunk.usage.cached_tokens,
            )
    raise RuntimeError("the stream ended without a final chunk")


async def run_ours(
    engine: MuseEngine, pool: PoolConfig, jobs: list[Job], concurrency: int, device: torch.device
) -> tuple[list, float]:
    gate = asyncio.Semaphore(concurrency)

    async def gated(job: Job) -> Outcome:
        async with gate:
            return await run_one(engine, prepared(pool, job.prompt, job.max_output_tokens))

    synchronize(device)
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(gated(job) for job in jobs))
    synchronize(device)
    return outcomes, time.perf_counter() - start


async def prefix_ttfts(engine: MuseEngine, pool: PoolConfig, seed: int) -> dict:
    rng = random.Random(seed + 1)
    second, cold, cached = [], [], []
    for _ in range(PREFIX_REPEATS):
        prefix = [rng.randrange(*ORDINARY_IDS) for _ in range(PREFIX_TOKENS)]
        suffix = [rng.randrange(*ORDINARY_IDS) for _ in range(PREFIX_SUFFIX_TOKENS)]
        await run_one(engine, prepared(pool, prefix, 16))  # first turn, finished before the second starts
        warm = await run_one(engine, prepared(pool, prefix + suffix, 1))
        fresh = [rng.randrange(*ORDINARY_IDS) for _ in range(PREFIX_TOKENS + PREFIX_SUFFIX_TOKENS)]
        cold_outcome = await run_one(engine, prepared(pool, fresh, 1))
        second.append(warm.ttft_s)
        cold.append(cold_outcome.ttft_s)
        cached.append(warm.cached_tokens)
    return {
        "prefix_ttft_ratio": statistics.median(second) / statistics.median(cold),
        "second_turn_ttft_s": second,
        "cold_turn_ttft_s": cold,
        "second_turn_cached_tokens": cached,
        "prompt_tokens": PREFIX_TOKENS + PREFIX_SUFFIX_TOKENS,
        "shared_prefix_tokens": PREFIX_TOKENS,
        "repeats": PREFIX_REPEATS,
        "note": "ratio of medians; engine idle; second turn = first turn's prompt + 64 new tokens",
    }


async def bench_ours(
    engine: MuseEngine, pool: PoolConfig, jobs: list[Job], args: argparse.Namespace, device: torch.device
) -> tuple:
    warmup_jobs = make_workload(args.seed + 7, 2)
    await asyncio.gather(*(run_one(engine, prepared(pool, j.prompt[:32], 4, tenant="warmup")) for j in warmup_jobs))
    timed = _TimedExecutor(engine.executor, device)
    engine.executor = timed
    outcomes, wall = await run_ours(engine, pool, jobs, args.concurrency, device)
    engine.executor = timed.inner
    prefix = None if args.skip_prefix else await prefix_ttfts(engine, pool, args.seed)
    return outcomes, wall, timed.steps, prefix


def cuda_graphs_used(engine: MuseEngine) -> dict | None:
    """Decode graphs the runner captured over the whole run; their capture time is in our wall time."""
    graphs = getattr(engine.executor, "graphs", None)
    if graphs is None:
        return None
    return {"captured": len(graphs.graphs), "capture_s": graphs.capture_s, "buckets": sorted(graphs.graphs)}


def linear_layers(model: torch.nn.Module) -> str:
    """What a model's linear layers run on."""
    packed = any(isinstance(m, PackedLinear) for m in model.modules())
    return "oneDNN, weights packed at load" if packed else "torch matmul (nn.Linear)"


# -- report ----------------------------------------------------------------------------


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
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="both sides")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32, help="our semaphore and running cap; HF batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-batched-tokens", type=int, default=2048)
    parser.add_argument("--max-prefill-chunk", type=int, default=512)
    parser.add_argument("--kv-cache-mib", type=int, default=512)
    parser.add_argument("--cpu-gemm", default="onednn", choices=CPU_GEMMS, help="our linear layers on a CPU")
    parser.add_argument("--skip-prefix", action="store_true", help="leave out the prefix-cache TTFT measurement")
    parser.add_argument("--hf-batching", default="both", choices=("both", *BATCHINGS), help="what HF runs")
    args = parser.parse_args()
    if args.dtype != "float32" and resolve_device(args.device).type != "cuda":
        parser.error("--dtype bfloat16 runs on cuda only")

    import transformers

    torch.set_num_threads(args.threads)
    bench_start = time.perf_counter()
    tokenizer = MuseTokenizer.load(None)
    pool = pool_config(args)
    jobs = make_workload(args.seed, args.requests)
    requested = [j.max_output_tokens for j in jobs]

    metrics = InMemoryMetrics()
    engine = MuseEngine(pool, tokenizer, metrics=metrics)
    model = engine.executor.model
    config = model.config
    dtype = getattr(torch, pool.model.dtype)
    device = next(model.parameters()).device

    async def ours_then_stop() -> tuple:
        try:
            return await bench_ours(engine, pool, jobs, args, device)
        finally:
            engine.shutdown(wait=True)  # its device thread ends before Hugging Face starts (see hf_baseline)

    outcomes, ours_wall, steps, prefix = asyncio.run(ours_then_stop())

    batchings = BATCHINGS if args.hf_batching == "both" else (args.hf_batching,)
    warmup = [Job(j.prompt[:32], 4) for j in make_workload(12345, 2)]
    hf, hf_runs = run_batchings(model, jobs, warmup, batchings, args.concurrency, args.max_batched_tokens)
    finished = {name: run for name, run in hf_runs.items() if isinstance(run, HFRun)}
    if not finished:
        raise RuntimeError(f"no Hugging Face batching finished: {hf_runs}")
    baseline = min(finished, key=lambda name: finished[name].wall_s)
    hf_outputs, hf_wall = finished[baseline].outputs, finished[baseline].wall_s

    ours_tokens = sum(o.output_tokens for o in outcomes)
    hf_tokens = sum(len(t) for t in hf_outputs)
    ttfts = [o.ttft_s for o in outcomes]
    ours_rate = ours_tokens / ours_wall
    hf_rate = hf_tokens / hf_wall

    def same_text(outputs: list[list[int]]) -> int:
        return sum(
            1
            for outcome, tokens in zip(outcomes, outputs, strict=True)
            if outcome.output_tokens == len(tokens) and outcome.text == tokenizer.decode(tokens)
        )

    step_s = [s for s, _, _ in steps]
    report = {
        "benchmark": "engine_vs_hf",
        "throughput_ratio_vs_hf": ours_rate / hf_rate,
        "device": str(device),
        "dtype": pool.model.dtype,
        "ours": {
            "output_tokens_per_s": ours_rate,
            "ttft_p50_s": percentile(ttfts, 0.5),
            "ttft_p99_s": percentile(ttfts, 0.99),
            "ttft_max_s": max(ttfts),
            "latency_p50_s": percentile([o.latency_s for o in outcomes], 0.5),
            "wall_s": ours_wall,
            "output_tokens": ours_tokens,
            "requests_ended_early": sum(1 for o, n in zip(outcomes, requested, strict=True) if o.output_tokens < n),
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
                "ttft_mean_s": metrics.ttft.sum / max(metrics.ttft.count, 1),
                "itl_mean_s": metrics.itl.sum / max(metrics.itl.count, 1),
                "note": "the engine's own recorder over the whole run: warm-up, workload and prefix turns",
            },
        },
        "hf": {
            "baseline": baseline,
            "output_tokens_per_s": hf_rate,
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
            "transformers": transformers.__version__,
        },
        "greedy_text_agreement": {
            "requests_with_identical_text": same_text(hf_outputs),
            "requests": len(jobs),
            "note": "our streamed text vs tokenizer.decode of the HF baseline's requested tokens; differences "
            "can come from near-tied logits under different batching, or from our early stops",
        },
        **({"prefix_cache": prefix, "prefix_ttft_ratio": prefix["prefix_ttft_ratio"]} if prefix else {}),
        "kv_bytes_per_token": config.kv_cache_bytes_per_token(torch.finfo(dtype).bits // 8),
        "model": {
            "size": args.size,
            "dtype": pool.model.dtype,
            "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "vocab_size": config.vocab_size,
        },
        "workload": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "prompt_tokens_uniform": list(PROMPT_TOKENS),
            "output_tokens_uniform": list(OUTPUT_TOKENS),
            "prompt_tokens_total": sum(len(j.prompt) for j in jobs),
            "requested_output_tokens_total": sum(requested),
            "seed": args.seed,
            "greedy": True,
            "defaults_used": args.requests == 64 and args.concurrency == 32,
        },
        "engine_config": {
            k: getattr(pool.engine, k)
            for k in (
                "max_running_requests",
                "max_batched_tokens",
                "max_prefill_chunk",
                "block_size",
                "kv_cache_bytes",
                "stream_interval_ms",
                "context_length",
                "max_output_tokens",
            )
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "notes": [
            "one process, one run: ours first (then the prefix-cache turns), then Hugging Face, padded "
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
