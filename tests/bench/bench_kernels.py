"""Achieved memory bandwidth of the fused kernels, and decode speed of the model with and without them.

- add+RMSNorm (bf16): bytes = read x and residual, write out and summed, read weight; hidden
  4096/8192 at 64, 256 and 4096 rows, against the torch reference (add, then rms_norm) on device.
- Paged-attention decode (bf16, 32 query heads over 8 kv heads, head_dim 128, block size 16):
  bytes = every context key and value once, plus q, out, block tables and lengths; 64-256
  sequences of 1K-8K tokens, against the torch reference (gather + SDPA) where it fits.
- Model decode: the `small` model in bf16, 64 sequences with 512-token prompts, 32 teacher-forced
  decode steps: tokens/s with kernels + CUDA graphs, kernels eager, and the torch path eager.

Times are `triton.testing.do_bench` medians (ms) or wall clock over synchronised steps; fractions
are of the H100 SXM's 3.35 TB/s HBM3 peak. Launches are eager, so at a few MB per call the
figure is mostly launch cost (Triton's Python launcher, tens of microseconds), not bandwidth;
serving decode replays CUDA graphs, where that cost is gone. Without CUDA it says so, writes
nothing and exits 0.

    python -m tests.bench.bench_kernels --out .bench/kernels.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from tests.bench.machine import machine

PEAK_BYTES_PER_S = 3.35e12
BF16 = torch.bfloat16


def bandwidth(num_bytes: int, ms: float) -> dict[str, float]:
    per_s = num_bytes / (ms * 1e-3)
    return {
        "ms": round(ms, 5),
        "bytes": num_bytes,
        "tb_per_s": round(per_s / 1e12, 3),
        "of_peak": round(per_s / PEAK_BYTES_PER_S, 3),
    }


def graph_ms(call: Any, calls_per_graph: int = 20) -> float:
    """Milliseconds per call when `calls_per_graph` calls are replayed as one CUDA graph."""
    from triton.testing import do_bench

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()  # warm-up outside capture: compiles and allocates
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            call()
    return do_bench(graph.replay) / calls_per_graph


def bench_add_rmsnorm() -> list[dict[str, Any]]:
    from triton.testing import do_bench

    from museserve_kernels import norm

    out = []
    for hidden in (4096, 8192):
        for rows in (64, 256, 4096):
            x, r = torch.randn(2, rows, hidden, device="cuda", dtype=BF16)
            w = torch.randn(hidden, device="cuda", dtype=BF16)
            num_bytes = 4 * x.numel() * x.element_size() + w.numel() * w.element_size()
            fused = do_bench(lambda: norm.add_rmsnorm(x, r, w, 1e-5))  # noqa: B023
            reference = do_bench(lambda: norm.add_rmsnorm_reference(x, r, w, 1e-5))  # noqa: B023
            # As served: decode steps replay CUDA graphs, so launch cost is not paid per call.
            fused_graph = graph_ms(lambda: norm.add_rmsnorm(x, r, w, 1e-5))  # noqa: B023
            reference_graph = graph_ms(lambda: norm.add_rmsnorm_reference(x, r, w, 1e-5))  # noqa: B023
            out.append({"hidden": hidden, "rows": rows, "kernel": bandwidth(num_bytes, fused),
                        "torch": bandwidth(num_bytes, reference), "speedup": round(reference / fused, 2),
                        "kernel_in_cuda_graph": bandwidth(num_bytes, fused_graph),
                        "torch_in_cuda_graph": bandwidth(num_bytes, reference_graph)})  # fmt: skip
    return out


def bench_paged_decode() -> list[dict[str, Any]]:
    from triton.testing import do_bench

    from museserve_kernels import paged_attention

    heads, kv_heads, d, bs = 32, 8, 128, 16
    out = []
    for batch, context in ((64, 1024), (64, 8192), (256, 1024), (256, 4096), (128, 8192)):
        blocks_per_seq = context // bs
        num_blocks = batch * blocks_per_seq
        keys, values = torch.randn(2, num_blocks * bs, kv_heads, d, device="cuda", dtype=BF16)
        tables = torch.randperm(num_blocks, device="cuda", dtype=torch.int32).view(batch, blocks_per_seq)
        lengths = torch.full((batch,), context, device="cuda", dtype=torch.int32)
        q = torch.randn(batch, heads, d, device="cuda", dtype=BF16)
        num_bytes = 2 * batch * context * kv_heads * d * 2 + 2 * q.numel() * 2 + tables.numel() * 4 + batch * 4
        kernel_ms = do_bench(lambda: paged_attention.paged_decode(q, keys, values, tables, lengths, bs))  # noqa: B023
        row: dict[str, Any] = {"batch": batch, "context": context, "kernel": bandwidth(num_bytes, kernel_ms)}
        if batch * context <= 256 * 1024:  # the reference materialises every gathered key and value in float32
            ref_ms = do_bench(lambda: paged_attention.paged_decode_reference(q, keys, values, tables, lengths, bs))  # noqa: B023
            row |= {"torch": bandwidth(num_bytes, ref_ms), "speedup": round(ref_ms / kernel_ms, 2)}
        out.append(row)
    return out


def bench_model_decode(batch: int = 64, prompt: int = 512, steps: int = 32) -> dict[str, Any]:
    from museserve.model import ops
    from museserve.model.config import MuseConfig
    from museserve.model.loader import build_model
    from museserve.runner.kv_pool import PagedKVPool
    from museserve.runner.model_runner import ModelRunner
    from tests.kernels.support import teacher_forced_plans

    config = MuseConfig.named("small", vocab_size=32_000)
    model = build_model(config, dtype=BF16, device="cuda")
    plans, num_blocks = teacher_forced_plans([prompt] * batch, steps, 16, config.vocab_size)

    def tokens_per_s(cuda_graphs: bool) -> float:
        runner = ModelRunner(model, PagedKVPool(config, num_blocks, 16, dtype=BF16, device=torch.device("cuda")),
                             cuda_graphs=cuda_graphs)  # fmt: skip
        runner.execute(plans[0])
        for plan in plans[1:3]:  # warm-up: compiles kernels, captures the graph bucket
            runner.execute(plan)
        start = time.perf_counter()
        for plan in plans[3:]:
            runner.execute(plan)  # returns after the device finished the step
        return batch * (len(plans) - 3) / (time.perf_counter() - start)

    result = {"kernels_cuda_graphs": tokens_per_s(True), "kernels_eager": tokens_per_s(False)}
    with ops.torch_reference_only():
        result["torch_eager"] = tokens_per_s(False)
    result = {k: round(v, 1) for k, v in result.items()}
    return {"model": "small", "dtype": "bfloat16", "batch": batch, "prompt": prompt, "tokens_per_s": result,
            "kernels_graphs_vs_torch_eager": round(result["kernels_cuda_graphs"] / result["torch_eager"], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/kernels.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device; the kernels are benchmarked on a GPU only. Nothing written.")
        return
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "machine": machine()}
    import triton

    report["triton"] = triton.__version__
    report["add_rmsnorm_bf16"] = bench_add_rmsnorm()
    report["paged_decode_bf16"] = bench_paged_decode()
    report["model_decode"] = bench_model_decode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
