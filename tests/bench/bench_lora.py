"""LoRA adapters against the base model, in one process, through the engine, on SmolLM2-135M
(the local setup's real pool, float32 on this CPU).

- `mixed_batch_throughput_ratio`: output tokens/s of 32 requests at once spread over 8 resident
  adapters of rank 16 (every decoder projection adapted), over the same 32 requests on the base
  pool with no adapters. Goal >= 0.7.
- `single_adapter_ratio`: the same 32 requests all on one adapter, over the base.
- `cold_load_ms`: bringing one adapter into an idle replica for a request: reading and checking
  its PEFT files, then placing its weights in a slot (median of the 8 loads, one at a time).

Each side runs in an engine of its own, one after the other (two live engines share the cores
badly); each is warmed up first (its adapters loaded), then measured `--runs` times, median.
Requests ignore EOS, so every side computes the same number of tokens.

    python -m tests.bench.bench_lora --out .bench/lora.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from museserve.config import PoolConfig, load_config
from museserve.domain import ChatRequest, Identity, Message, Role, TextPart
from museserve.model.config import MuseConfig
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from tests.bench.bench_engine import source_state
from tests.bench.machine import machine
from tests.bench.report import write_report
from tests.lora_support import write_adapter

CONFIG = Path(__file__).resolve().parents[2] / "deploy/local/museserve.yaml"
POOL = "smollm2-135m"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOPICS = ("a garden", "the sea", "a city at night", "winter", "a library", "trains", "the moon", "bread")


def base_pool(real: PoolConfig) -> PoolConfig:
    """The shipped pool with room for the batch, plain decoding (speculation measured elsewhere)."""
    engine = real.engine.model_copy(
        update={
            "max_running_requests": 64,
            "max_waiting_requests": 128,
            "speculative": real.engine.speculative.model_copy(update={"method": "off"}),
        }
    )
    return real.model_copy(update={"engine": engine})


async def measure(pool: PoolConfig, chat_format, prepare, adapters: list[str], args) -> dict:
    engine = build_engine(pool, chat_format)
    try:
        for i, adapter in enumerate(dict.fromkeys(adapters)):  # one at a time: each load on an idle replica
            await drain(engine, prepare(f"warm-{i}", adapter, 4, i))
        rates = []
        for run in range(args.runs):
            requests = [prepare(f"r{run}-{i}", adapters[i % len(adapters)], args.max_tokens, i + 100 * run)
                        for i in range(args.batch)]  # fmt: skip
            started = time.perf_counter()
            counts = await asyncio.gather(*(drain(engine, r) for r in requests))
            rates.append(sum(counts) / (time.perf_counter() - started))
        result = {"tokens_per_s": statistics.median(rates), "runs": rates}
        if engine.adapters is not None:
            seconds = engine.adapters.metrics.load_seconds
            result["load_ms"] = [s * 1e3 for s in seconds]
        return result
    finally:
        engine.shutdown(wait=True)


async def drain(engine, request) -> int:
    return sum([chunk.num_new_tokens async for chunk in engine.generate(request)])


async def run(args: argparse.Namespace) -> dict:
    config = load_config(CONFIG)
    real = base_pool(config.pool(POOL))
    chat_format = pool_model(real, config.preprocess.media, None).chat_format
    preprocessor = Preprocessor.for_pools(config)[POOL]
    store = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    arch = MuseConfig.from_hf_dict(__import__("museserve.checkpoint", fromlist=["read_checkpoint"])
                                   .read_checkpoint(real.model.path, real.model.load_format).hf_config)  # fmt: skip
    names = [f"product-{i}" for i in range(args.adapters)]
    for seed, name in enumerate(names):
        write_adapter(store / name, arch, rank=args.rank, seed=seed, targets=TARGETS, scale=0.05)
    lora_pool = real.model_copy(
        update={
            "lora": real.lora.model_copy(
                update={"directory": str(store), "max_loaded_adapters": args.adapters, "max_rank": args.rank}
            )
        }  # fmt: skip
    )

    def prepare(rid: str, adapter: str, max_tokens: int, i: int):
        text = f"Write a short poem about {TOPICS[i % len(TOPICS)]}, number {i}."
        prepared = preprocessor.prepare(ChatRequest(rid, (Message(Role.USER, (TextPart(text),)),),
                                                    identity=Identity(rid)), real)  # fmt: skip
        sampling = replace(prepared.sampling, temperature=0.0, max_output_tokens=max_tokens, ignore_eos=True)
        return replace(prepared, sampling=sampling, adapter=adapter)

    base = await measure(real, chat_format, prepare, [""], args)
    mixed = await measure(lora_pool, chat_format, prepare, names, args)
    single = await measure(lora_pool, chat_format, prepare, names[:1], args)
    return {
        "benchmark": "lora",
        "machine": machine(),
        "source": source_state(),
        "model": real.model.path,
        "batch": args.batch,
        "adapters": args.adapters,
        "rank": args.rank,
        "max_tokens": args.max_tokens,
        "mixed_batch_throughput_ratio": mixed["tokens_per_s"] / base["tokens_per_s"],
        "single_adapter_ratio": single["tokens_per_s"] / base["tokens_per_s"],
        "cold_load_ms": statistics.median(mixed["load_ms"]),
        "tokens_per_s": {"base": base, "mixed": mixed, "single": single},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", default=".bench/lora.json")
    args = parser.parse_args()
    write_report(Path(args.out), asyncio.run(run(args)))


if __name__ == "__main__":
    main()
