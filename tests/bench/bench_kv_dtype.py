"""What a bfloat16 KV cache costs in accuracy and wins in tokens, on the default real checkpoint
(SmolLM2-135M-Instruct, float32 weights): the same plans run on a float32 pool and on a
bfloat16 one, in this process.

- Teacher-forced: both runners prefill each prompt (chunks of 256) and then decode the float32
  runner's greedy tokens; at every decode position the two logits rows are compared:
  `max_abs_logit_diff`, `mean_kl_nats` (float32 || bfloat16) and `top1_agreement`.
- Free-running: each runner decodes its own greedy tokens; `greedy_tokens_equal` counts the
  positions before the first difference, of `decode_tokens` per prompt.
- `kv_bytes_per_token` of each dtype (the window a `kv_cache_bytes` budget holds follows it)
  and `decode_s` per dtype.

    python -m tests.bench.bench_kv_dtype --out .bench/kv_dtype.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from museserve.config import PoolConfig
from museserve.engine.plan import ScheduledSequence, SchedulerPlan
from museserve.runner.loading import local_runner
from museserve.runner.model_runner import ModelRunner
from tests.bench.bench_engine import source_state
from tests.bench.machine import machine
from tests.bench.report import write_report
from tests.real_model import SMOLLM2_GGUF

CHUNK = 256


def runner_of(kv_cache_dtype: str) -> ModelRunner:
    pool = PoolConfig(
        name="kv-dtype",
        model={"load_format": "gguf", "path": SMOLLM2_GGUF, "dtype": "float32", "device": "cpu"},
        engine={
            "kv_cache_bytes": 256 << 20,
            "kv_cache_dtype": kv_cache_dtype,
            "context_length": 8192,
            "max_output_tokens": 1024,
        },
    )
    return local_runner(pool, 1)


def step(runner: ModelRunner, first: int, tokens: list[int], samples: bool = True) -> torch.Tensor:
    blocks = tuple(range(runner.num_blocks))
    plan = SchedulerPlan((ScheduledSequence("p", first, tuple(tokens), blocks, samples=samples),), ())
    return runner.execute(plan)[-1].float()


def prefill(runner: ModelRunner, prompt: list[int]) -> torch.Tensor:
    logits = torch.empty(0)
    for start in range(0, len(prompt), CHUNK):
        piece = prompt[start : start + CHUNK]
        logits = step(runner, start, piece)
    return logits


def teacher_forced(a: ModelRunner, b: ModelRunner, prompt: list[int], n: int) -> dict:
    la, lb = prefill(a, prompt), prefill(b, prompt)
    diffs, kls, agree = [], [], 0
    for i in range(n):
        diffs.append(float((la - lb).abs().max()))
        pa, pb = la.log_softmax(-1), lb.log_softmax(-1)
        kls.append(float((pa.exp() * (pa - pb)).sum()))
        token = int(la.argmax())
        agree += token == int(lb.argmax())
        la, lb = step(a, len(prompt) + i, [token]), step(b, len(prompt) + i, [token])
    return {"diffs": diffs, "kls": kls, "agree": agree}


def free_running(runner: ModelRunner, prompt: list[int], n: int) -> tuple[list[int], float]:
    logits = prefill(runner, prompt)
    tokens: list[int] = []
    start = time.perf_counter()
    for i in range(n):
        tokens.append(int(logits.argmax()))
        logits = step(runner, len(prompt) + i, tokens[-1:])
    return tokens, time.perf_counter() - start


def equal_prefix(x: list[int], y: list[int]) -> int:
    return next((i for i, (p, q) in enumerate(zip(x, y, strict=True)) if p != q), len(x))


def run(args: argparse.Namespace) -> dict:
    exact, half = runner_of("model"), runner_of("bfloat16")
    rng = random.Random(args.seed)
    vocab = exact.model.config.vocab_size
    prompts = [[rng.randrange(100, vocab) for _ in range(args.prompt_tokens)] for _ in range(args.prompts)]
    diffs, kls, agree, equal, seconds = [], [], 0, [], {"float32": 0.0, "bfloat16": 0.0}
    with torch.inference_mode():
        for prompt in prompts:
            forced = teacher_forced(exact, half, prompt, args.decode_tokens)
            diffs += forced["diffs"]
            kls += forced["kls"]
            agree += forced["agree"]
            mine, t_exact = free_running(exact, prompt, args.decode_tokens)
            theirs, t_half = free_running(half, prompt, args.decode_tokens)
            seconds["float32"] += t_exact
            seconds["bfloat16"] += t_half
            equal.append(equal_prefix(mine, theirs))
    positions = len(diffs)
    config = exact.model.config
    return {
        "machine": machine(),
        "source": source_state(),
        "model": SMOLLM2_GGUF,
        "prompts": args.prompts,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "kv_bytes_per_token": {
            "float32": config.kv_cache_bytes_per_token(4),
            "bfloat16": config.kv_cache_bytes_per_token(2),
        },
        "max_abs_logit_diff": max(diffs),
        "mean_abs_logit_diff_max_per_position": sum(diffs) / positions,
        "mean_kl_nats": sum(kls) / positions,
        "top1_agreement": agree / positions,
        "greedy_tokens_equal": equal,
        "decode_s": seconds,
        "bfloat16_decode_speedup": seconds["float32"] / seconds["bfloat16"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".bench/kv_dtype.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--decode-tokens", type=int, default=64)
    args = parser.parse_args()
    write_report(args.out, run(args))


if __name__ == "__main__":
    main()
