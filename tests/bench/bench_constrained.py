"""Per-step cost of grammar-constrained decoding: 8 requests in one batch, each with its own
tool schema (tool_choice REQUIRED), against the same 8 requests unconstrained.

Each step's time is split into the model (`executor.execute`) and sampling (`runner.device.sample_rows`, which
runs the logits processors); the constrained run also times the constraints themselves (feed
the accepted token, fill the bitmask, apply it). Grammars are compiled before the clock starts
(the first request of each schema), so steps measure matching, not compiling.

    python -m tests.bench.bench_constrained --device cpu --out .bench/constrained.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import torch

import museserve.runner.device as device_module
from museserve.config import PoolConfig
from museserve.domain import ToolChoice, ToolChoiceKind, ToolSpec
from museserve.engine.engine import MuseEngine
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.structured.constraint import OutputConstraint
from tests.bench.machine import machine
from tests.support import prepared_request

BATCH = 8


def schema(i: int) -> ToolSpec:
    properties = {
        "city": {"type": "string", "maxLength": 16},
        "unit": {"enum": ["c", "f", "k"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14 + i},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
    }
    return ToolSpec(f"tool_{i}", "", json.dumps({"type": "object", "properties": properties, "required": ["city"]}))


class Timers:
    def __init__(self) -> None:
        self.execute: list[float] = []
        self.sample: list[float] = []
        self.constraint = 0.0

    def wrap(self, engine: MuseEngine, execute, sample) -> None:

        def timed_execute(plan):
            start = time.perf_counter()
            out = execute(plan)
            if out.is_cuda:
                torch.cuda.synchronize()
            self.execute.append(time.perf_counter() - start)
            return out

        def timed_sample(rows, logits):
            start = time.perf_counter()
            out = sample(rows, logits)
            self.sample.append(time.perf_counter() - start)
            return out

        engine.runner.executor.execute = timed_execute
        device_module.sample_rows = timed_sample


async def run(engine: MuseEngine, constrained: bool, tokens: int) -> None:
    async def one(i: int) -> None:
        extra = {"tools": (schema(i),), "tool_choice": ToolChoice(ToolChoiceKind.REQUIRED)} if constrained else {}
        request = prepared_request(
            f"{constrained}-{i}",
            list(range(40 + i, 72 + i)),
            temperature=1.0,
            seed=i,
            max_output_tokens=tokens,
            **extra,
        )
        async for _ in engine.generate(request):
            pass

    await asyncio.gather(*(one(i) for i in range(BATCH)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tokenizer = MuseTokenizer.load(None)
    pool = PoolConfig(
        name="bench",
        model={"size": args.size, "load_format": "dummy", "device": args.device},
        engine={"max_running_requests": BATCH, "max_batched_tokens": 512, "stream_interval_ms": 0},
    )
    engine = build_engine(pool, MuseFormat(tokenizer))
    for i in range(BATCH):  # compile every grammar before timing
        engine.runner.constraints.build_now(
            prepared_request(tools=(schema(i),), tool_choice=ToolChoice(ToolChoiceKind.REQUIRED))
        )
    asyncio.run(run(engine, False, 4))  # warm-up
    results = {}
    call = OutputConstraint.__call__
    execute, sample = engine.runner.executor.execute, device_module.sample_rows
    for constrained in (False, True):
        timers = Timers()
        timers.wrap(engine, execute, sample)

        def timed_call(self, prompt, output, logits, _t=timers):
            start = time.perf_counter()
            out = call(self, prompt, output, logits)
            _t.constraint += time.perf_counter() - start
            return out

        OutputConstraint.__call__ = timed_call
        asyncio.run(run(engine, constrained, args.tokens))
        steps = len(timers.sample)
        results["constrained" if constrained else "plain"] = {
            "steps": steps,
            "execute_ms_mean": 1000 * statistics.mean(timers.execute),
            "sample_ms_mean": 1000 * statistics.mean(timers.sample),
            "constraint_ms_per_step": 1000 * timers.constraint / steps,
        }
    OutputConstraint.__call__ = call
    plain, constrained = results["plain"], results["constrained"]
    results["sample_overhead_ms_per_step"] = constrained["sample_ms_mean"] - plain["sample_ms_mean"]
    results["device"] = args.device
    results["machine"] = machine()
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
