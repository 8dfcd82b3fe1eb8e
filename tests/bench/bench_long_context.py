"""Long prompts on muse-tiny: prefill time from 4K to 262,144 tokens, decode pace while a
262K prompt prefills, and (with the second cache tier) a second turn on a 64K document.

- `prefill_s` / `prefill_tokens_per_s` per length: time to the first token of a prompt of
  that many tokens, alone on the engine (greedy, one output token, no prefix cache).
- `copy_baseline`: the same prompts (up to 64K) with the replaced attention path, in this
  process: whole-context copies and a T x S mask per chunk per layer; `speedup_vs_copy`.
- `scaling_vs_flops`: (time 262K / time 64K) / (FLOPs 262K / FLOPs 64K). 1.0: time follows
  the work; above it, overhead that grows with the context.
- `decode_itl_p99_during_262k_prefill_ms`: inter-token gaps of 4 decoding requests while a
  262K prompt prefills beside them (the fair chunking of engine.max_prefill_attention).
- `tier_second_turn_ttft_ratio`: a second turn on a 64K document after other traffic evicted
  it, TTFT with the second tier (host memory) over without; `disk_tier_...` with a file tier.
- `end_to_end_262k`: one 262,144-token request (prompt and 8 output tokens) over gRPC on the
  default local setup (deploy/local: Ray, gateway, preprocess, the muse-tiny pool).
- `peak_rss_bytes` after our runs, `kv_bytes_per_token` of the KV dtype.

    python -m tests.bench.bench_long_context --out .bench/long_context.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import statistics
import time
from pathlib import Path

from museserve.config import PoolConfig
from museserve.engine.engine import MuseEngine
from museserve.model.config import MuseConfig
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.bench.bench_engine import source_state
from tests.bench.engine_side import prepared, run_one
from tests.bench.long_context.copy_baseline import copying_attention
from tests.bench.long_context.end_to_end import end_to_end
from tests.bench.long_context.flops import prefill_flops
from tests.bench.long_context.tier import tier_report
from tests.bench.machine import machine
from tests.bench.report import write_report

WINDOW = 262_144
LENGTHS = (4096, 16_384, 65_536, WINDOW - 8)
BASELINE_LENGTHS = (4096, 16_384, 65_536)
DECODERS = 4


def pool_config(kv_cache_dtype: str = "model") -> PoolConfig:
    return PoolConfig(
        name="muse-long",
        model={"size": "tiny", "device": "cpu"},
        engine={
            "context_length": WINDOW,
            "max_output_tokens": 65_536,
            "kv_cache_bytes": 200 << 20,
            "kv_cache_dtype": kv_cache_dtype,
            "enable_prefix_caching": False,
            "stream_interval_ms": 0,
        },
    )


def prompt_of(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(32, 8000) for _ in range(n)]


async def prefill_seconds(engine: MuseEngine, pool: PoolConfig, lengths: tuple[int, ...], seed: int) -> dict:
    rng = random.Random(seed)
    await run_one(engine, prepared(pool, prompt_of(rng, 256), 1))  # warm-up
    times = {}
    for n in lengths:
        outcome = await run_one(engine, prepared(pool, prompt_of(rng, n), 1))
        times[n] = outcome.ttft_s
        print(f"prefill {n}: {outcome.ttft_s:.2f} s", flush=True)
    return times


async def itl_during_prefill(engine: MuseEngine, pool: PoolConfig, seed: int) -> dict:
    """Decoders run; a 262K prompt arrives; the decoders' gaps until its first token."""
    rng = random.Random(seed)
    arrivals: list[list[float]] = [[] for _ in range(DECODERS)]

    async def decode(index: int) -> None:
        async for _ in engine.generate(prepared(pool, prompt_of(rng, 64), 60_000)):
            arrivals[index].append(time.perf_counter())

    decoders = [asyncio.create_task(decode(i)) for i in range(DECODERS)]
    await asyncio.sleep(2.0)
    start = time.perf_counter()
    long = await run_one(engine, prepared(pool, prompt_of(rng, WINDOW - 8), 1))
    end = start + long.ttft_s
    for task in decoders:
        task.cancel()
    await asyncio.gather(*decoders, return_exceptions=True)
    gaps = [b - a for times in arrivals for a, b in zip(times, times[1:], strict=False) if start <= a and b <= end]
    gaps.sort()
    return {
        "prefill_s_beside_decodes": long.ttft_s,
        "decode_tokens_during_prefill": len(gaps),
        "decode_itl_p50_ms": 1e3 * statistics.median(gaps),
        "decode_itl_p99_ms": 1e3 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        "decode_itl_max_ms": 1e3 * gaps[-1],
    }


def run(args: argparse.Namespace) -> dict:
    seed, lengths, baseline_lengths = args.seed, tuple(args.lengths), tuple(args.baseline_lengths)
    tokenizer = MuseTokenizer.load(None)
    pool = pool_config()
    config = MuseConfig.named("tiny", vocab_size=tokenizer.vocab_size)

    async def ours() -> tuple[dict, dict | None]:
        engine = build_engine(pool, MuseFormat(tokenizer))
        try:
            times = await prefill_seconds(engine, pool, lengths, seed)
            return times, (await itl_during_prefill(engine, pool, seed + 1) if not args.no_itl else None)
        finally:
            engine.shutdown()

    async def copying() -> dict:
        with copying_attention():  # the runner builds each step's backend: patched for the whole run
            engine = build_engine(pool, MuseFormat(tokenizer))
            try:
                return await prefill_seconds(engine, pool, baseline_lengths, seed)
            finally:
                engine.shutdown()

    times, during = asyncio.run(ours())
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    baseline = asyncio.run(copying()) if baseline_lengths else {}
    report: dict = {
        "machine": machine(),
        "source": source_state(),
        "model": "dummy tiny (float32)",
        "kv_bytes_per_token": config.kv_cache_bytes_per_token(pool.kv_element_bytes),
        "prefill_s": {str(n): t for n, t in times.items()},
        "prefill_tokens_per_s": {str(n): n / t for n, t in times.items()},
        "copy_baseline": {
            "prefill_s": {str(n): t for n, t in baseline.items()},
            "speedup_vs_copy": {str(n): baseline[n] / times[n] for n in baseline if n in times},
        },
        "peak_rss_bytes": peak_rss,
        "engine_config": {
            k: getattr(pool.engine, k)
            for k in ("max_batched_tokens", "max_prefill_chunk", "max_prefill_attention", "block_size")
        },
    }
    if 65_536 in times and lengths[-1] > 65_536:
        long = lengths[-1]
        time_ratio = times[long] / times[65_536]
        flop_ratio = prefill_flops(config, long) / prefill_flops(config, 65_536)
        report["scaling_vs_flops"] = time_ratio / flop_ratio
    if during is not None:
        report["during_262k_prefill"] = during
        report["decode_itl_p99_during_262k_prefill_ms"] = during["decode_itl_p99_ms"]
    if not args.no_tier:
        report["second_tier"] = tier_report(seed)
        report["tier_second_turn_ttft_ratio"] = report["second_tier"]["tier_second_turn_ttft_ratio"]
    if not args.no_end_to_end:
        report["end_to_end_262k"] = end_to_end()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".bench/long_context.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--baseline-lengths", type=int, nargs="*", default=list(BASELINE_LENGTHS))
    parser.add_argument("--no-itl", action="store_true", help="skip the decode pace beside a 262K prefill")
    parser.add_argument("--no-tier", action="store_true", help="skip the second-tier turn")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the 262K request through the stack")
    args = parser.parse_args()
    write_report(args.out, run(args))


if __name__ == "__main__":
    main()
