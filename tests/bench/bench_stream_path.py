"""What the serving path costs on top of generation itself.

Baseline: the plain `Gateway` with the preprocessor and engine in this process (no Ray,
no gRPC). Measured against it, in the same process and run: the full path (gRPC client
-> Ray Serve proxy -> gateway -> preprocess -> model pool) with one message per token,
and with deltas coalesced over 15 ms, each with Ray Serve's throughput-optimized mode off
and on (a fresh local Ray node for each). Reported per variant: time to first token, output
tokens/s of one stream, and aggregate tokens/s of 8 concurrent streams; ratios are
variant / baseline (throughput: higher is better; TTFT: lower is better).

    python -m tests.bench.bench_stream_path --out .bench/stream_path.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig, parse_config
from museserve.domain import ChatRequest, Message, Role, SamplingParams, TextDelta, TextPart, Usage
from museserve.engine.engine import MuseEngine
from museserve.gateway.gateway import Gateway
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.bench.machine import machine
from tests.support import free_port, start_local_app

OUTPUT_TOKENS = 128
REPEATS = 8
CONCURRENCY = 8
PROMPT = "Describe the request path of a serving platform in detail."


def bench_config(grpc_port: int, http_port: int, throughput_optimized: bool) -> MuseServeConfig:
    engine = {"context_length": 4096, "max_output_tokens": 1024, "default_max_output_tokens": 64}
    return parse_config(
        {
            "server": {"grpc_port": grpc_port, "http_port": http_port, "throughput_optimized": throughput_optimized},
            "pools": [
                {"name": "per-token", "engine": {**engine, "stream_interval_ms": 0}},
                {"name": "coalesced", "engine": {**engine, "stream_interval_ms": 15}},
            ],
        }
    )


class _LocalPreprocess:
    def __init__(self, config: MuseServeConfig, tokenizer: MuseTokenizer):
        self._config = config
        self._pre = Preprocessor(PoolModel.muse(tokenizer), config.preprocess.media, 600)

    async def prepare(self, request, pool):
        return self._pre.prepare(request, self._config.pool(pool))

    async def count(self, request, pool):
        return self._pre.count(request, self._config.pool(pool))


class _LocalPool:
    def __init__(self, engine: MuseEngine):
        self._engine = engine

    def generate(self, request):
        return self._engine.generate(request)


def _summary(ttfts: list[float], rates: list[float], aggregate: float) -> dict:
    return {
        "ttft_ms_p50": statistics.median(ttfts) * 1000,
        "single_stream_tokens_per_s_p50": statistics.median(rates),
        f"aggregate_tokens_per_s_{CONCURRENCY}_streams": aggregate,
    }


async def _baseline(config: MuseServeConfig) -> dict:
    tokenizer = MuseTokenizer.load(None)
    pools = {p.name: _LocalPool(build_engine(p, MuseFormat(tokenizer))) for p in config.pools}
    gateway = Gateway(config, _LocalPreprocess(config, tokenizer), pools)

    def request() -> ChatRequest:
        sampling = SamplingParams(temperature=0.0, max_output_tokens=OUTPUT_TOKENS)
        return ChatRequest(uuid.uuid4().hex, (Message(Role.USER, (TextPart(PROMPT),)),), "per-token", sampling=sampling)

    async def one() -> tuple[float, float, int]:
        start = time.perf_counter()
        first, tokens = None, 0
        async for event in gateway.stream(request()):
            if isinstance(event, TextDelta) and first is None:
                first = time.perf_counter()
            if isinstance(event, Usage):
                tokens = event.output_tokens
        end = time.perf_counter()
        return first - start, tokens / (end - first), tokens

    await one()  # warm-up
    results = [await one() for _ in range(REPEATS)]
    start = time.perf_counter()
    together = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    aggregate = sum(t for _, _, t in together) / (time.perf_counter() - start)
    return _summary([r[0] for r in results], [r[1] for r in results], aggregate)


def _over_grpc(address: str, model: str) -> dict:
    client = ChatClient(address)

    def one() -> tuple[float, float, int]:
        request = build_request(PROMPT, model=model, temperature=0.0, max_output_tokens=OUTPUT_TOKENS)
        start = time.perf_counter()
        first, tokens = None, 0
        for event in client.stream(request, timeout=300):
            kind = event.WhichOneof("event")
            if kind == "text_delta" and first is None:
                first = time.perf_counter()
            elif kind == "usage":
                tokens = event.usage.output_tokens
        end = time.perf_counter()
        return first - start, tokens / (end - first), tokens

    one()  # warm-up
    results = [one() for _ in range(REPEATS)]
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        start = time.perf_counter()
        together = list(pool.map(lambda _: one(), range(CONCURRENCY)))
        aggregate = sum(t for _, _, t in together) / (time.perf_counter() - start)
    client.close()
    return _summary([r[0] for r in results], [r[1] for r in results], aggregate)


def _ratios(variant: dict, baseline: dict) -> dict:
    return {key: variant[key] / baseline[key] for key in baseline}


def _served_variants(throughput_optimized: bool) -> dict[str, dict]:
    import ray

    config = bench_config(free_port(), free_port(), throughput_optimized)
    mode = "optimized" if throughput_optimized else "default"
    try:
        start_local_app(config)
        address = f"127.0.0.1:{config.server.grpc_port}"
        return {f"{mode}_{model}": _over_grpc(address, model) for model in ("per-token", "coalesced")}
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/stream_path.json"))
    args = parser.parse_args()

    # Ray starts replicas that reserve no CPU with one intra-op thread; the baseline
    # runs the same way, so the ratios measure the serving path, not threading.
    torch.set_num_threads(1)
    baseline = asyncio.run(_baseline(bench_config(free_port(), free_port(), False)))
    variants = {**_served_variants(throughput_optimized=False), **_served_variants(throughput_optimized=True)}
    report = {
        "benchmark": "stream_path",
        "machine": machine(),
        "torch_threads_per_model": 1,
        "workload": {
            "model": "tiny (dummy weights)",
            "output_tokens": OUTPUT_TOKENS,
            "repeats": REPEATS,
            "concurrency": CONCURRENCY,
            "variants": "{default,optimized}: Ray Serve throughput-optimized mode off/on; "
            "per-token: one gRPC message per token; coalesced: deltas within 15 ms in one message",
        },
        "baseline_in_process": baseline,
        **variants,
        "ratios_vs_baseline": {name: _ratios(result, baseline) for name, result in variants.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
