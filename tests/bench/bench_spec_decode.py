"""Speculative decoding against plain decoding, in one process, through the engine.

- SmolLM2-135M (the local setup's real pool) with n-gram prompt lookup, greedy:
  - `ngram_speedup_repetitive_b1`: decode tokens/s of one request at a time whose answer quotes
    its prompt (code edits: "add a docstring", "rename"), speculation over plain;
  - `ngram_speedup_random_b1`: the same where nothing is quoted (stories, explanations);
  - `speedup_b32`: output tokens/s of 32 requests at once (the repetitive prompts), where the
    pool's per-step cutoff (`speculative.max_batch`) turns speculation off;
  - `speedup_by_batch_without_cutoff`: the same at 1..32 requests with the cutoff lifted: where
    verification stops paying on this machine (the default cutoff's evidence).
- muse-small with a muse-tiny draft (seeded dummy weights, the bundled tokenizer): `draft_speedup_b1`.
  Two unrelated random models agree on almost nothing, so this measures what the draft's passes
  cost when its proposals fail and adaptivity pauses them; a trained pair is what gains.

Decode tokens/s: (tokens - 1) / (last token's time - first token's time), per request; each side
alternates and reports its median. `greedy_identical`: every speculative answer here equals the
plain one, token for token.

    python -m tests.bench.bench_spec_decode --out .bench/spec_decode.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import replace
from pathlib import Path

from museserve.config import PoolConfig, load_config
from museserve.config.speculative import SpeculativeConfig
from museserve.domain import ChatRequest, Identity, Message, Role, TextPart
from museserve.engine.engine import MuseEngine
from museserve.messages import PreparedRequest
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from tests.bench.bench_engine import source_state
from tests.bench.machine import machine
from tests.bench.report import write_report

CONFIG = Path(__file__).resolve().parents[2] / "deploy/local/museserve.yaml"
POOL = "smollm2-135m"
CODE = (
    "def parse_config(path):\n    with open(path) as handle:\n        text = handle.read()\n    values = {}\n"
    "    for line in text.splitlines():\n        line = line.strip()\n"
    '        if not line or line.startswith("#"):\n            continue\n'
    '        key, _, value = line.partition("=")\n        values[key.strip()] = value.strip()\n    return values\n',
    "class Counter:\n    def __init__(self):\n        self.counts = {}\n\n    def add(self, word):\n"
    "        self.counts[word] = self.counts.get(word, 0) + 1\n\n    def top(self, n):\n"
    "        return sorted(self.counts.items(), key=lambda item: -item[1])[:n]\n",
    "def merge(left, right):\n    result = []\n    i = j = 0\n    while i < len(left) and j < len(right):\n"
    "        if left[i] <= right[j]:\n            result.append(left[i])\n            i += 1\n"
    "        else:\n            result.append(right[j])\n            j += 1\n"
    "    return result + left[i:] + right[j:]\n",
)
REPETITIVE = tuple(f"Add a docstring to this function. Reply with the complete updated code only.\n{c}" for c in CODE)
RANDOM = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten year old.",
    "Give three tips for learning to play the guitar, with a sentence on each.",
)


def with_speculation(pool: PoolConfig, **fields) -> PoolConfig:
    engine = pool.engine.model_copy(update={"speculative": SpeculativeConfig(**fields)})
    return pool.model_copy(update={"engine": engine})


class Side:
    """One engine, and the requests it answered."""

    def __init__(self, pool: PoolConfig, chat_format, prepare):
        self.engine: MuseEngine = build_engine(pool, chat_format)
        self.prepare = prepare
        self.count = 0

    async def answer(self, text: str, max_tokens: int) -> tuple[list[int], float]:
        """The answer's token ids and its decode tokens/s."""
        self.count += 1
        request: PreparedRequest = self.prepare(text, f"q{self.count}", max_tokens)
        tokens, first, last = [], None, None
        async for chunk in self.engine.generate(request):
            if chunk.logprobs:
                last = time.perf_counter()
                first = first or last
            tokens.extend(p.chosen.token_id for p in chunk.logprobs)
        rate = (len(tokens) - 1) / (last - first) if last and last > first else 0.0
        return tokens, rate

    async def batch(self, texts: list[str], max_tokens: int) -> tuple[list[list[int]], float]:
        """Answers of `texts` sent at once, and the output tokens/s of the whole batch."""
        started = time.perf_counter()
        results = await asyncio.gather(*(self.answer(t, max_tokens) for t in texts))
        answers = [tokens for tokens, _ in results]
        return answers, sum(len(a) for a in answers) / (time.perf_counter() - started)


async def compare(plain: Side, spec: Side, texts: tuple[str, ...], runs: int, max_tokens: int) -> dict:
    """b1 decode rates, alternating sides, and whether every answer matched."""
    rates: dict[str, list[float]] = {"plain": [], "spec": []}
    identical = True
    for run in range(runs + 1):  # run 0 warms both sides and is not counted
        for text in texts:
            base, base_rate = await plain.answer(text, max_tokens)
            ours, our_rate = await spec.answer(text, max_tokens)
            identical &= base == ours
            if run:
                rates["plain"].append(base_rate)
                rates["spec"].append(our_rate)
    plain_rate, spec_rate = statistics.median(rates["plain"]), statistics.median(rates["spec"])
    return {"plain_tokens_per_s": plain_rate, "spec_tokens_per_s": spec_rate, "speedup": spec_rate / plain_rate,
            "identical": identical}  # fmt: skip


def metrics_of(side: Side) -> dict:
    m = side.engine.metrics
    return {
        "drafts": m.spec_drafts,
        "draft_tokens": m.spec_draft_tokens,
        "accepted_tokens": m.spec_accepted_tokens,
        "acceptance_rate": m.spec_acceptance_rate,
        "mean_accepted_len": m.spec_mean_accepted_length,
        "accepted_per_position": [m.spec_accepted_per_position[i] for i in range(len(m.spec_accepted_per_position))],
    }


async def batched(plain: Side, spec: Side, size: int, max_tokens: int) -> tuple[float, bool]:
    texts = [REPETITIVE[i % len(REPETITIVE)] + f"\n# {i}" for i in range(size)]
    base, base_rate = await plain.batch(texts, max_tokens)
    ours, our_rate = await spec.batch(texts, max_tokens)
    return our_rate / base_rate, base == ours


async def run(args: argparse.Namespace) -> dict:
    config = load_config(CONFIG)
    real = config.pool(POOL)
    chat_format = pool_model(real, config.preprocess.media, None).chat_format
    preprocessor = Preprocessor.for_pools(config)[POOL]

    def prepare(text: str, rid: str, max_tokens: int) -> PreparedRequest:
        request = ChatRequest(rid, (Message(Role.USER, (TextPart(text),)),), identity=Identity(rid))
        prepared = preprocessor.prepare(request, real)
        sampling = replace(prepared.sampling, temperature=0.0, max_output_tokens=max_tokens, logprobs=True)
        return replace(prepared, sampling=sampling)

    plain = Side(with_speculation(real, method="off"), chat_format, prepare)
    spec = Side(with_speculation(real, method="ngram", num_speculative_tokens=args.k), chat_format, prepare)
    report: dict = {
        "benchmark": "spec_decode",
        "machine": machine(),
        "source": source_state(),
        "model": real.model.path,
    }
    try:
        repetitive = await compare(plain, spec, REPETITIVE, args.runs, args.max_tokens)
        report["ngram_repetitive_b1"] = {**repetitive, **metrics_of(spec)}
        random = await compare(plain, spec, RANDOM, args.runs, args.max_tokens)
        report["ngram_random_b1"] = random
        speedup_b32, identical_b32 = await batched(plain, spec, 32, args.max_tokens)
        report["b32"] = {"speedup": speedup_b32, "identical": identical_b32,
                         "max_batch": spec.engine.scheduler.limits.max_speculating_batch}  # fmt: skip
    finally:
        spec.engine.shutdown()
    unlimited = Side(with_speculation(real, method="ngram", num_speculative_tokens=args.k, max_batch=64), chat_format,
                     prepare)  # fmt: skip
    by_batch: dict[str, float] = {}
    identical_by_batch = True
    try:
        for size in args.batches:
            speedup, identical = await batched(plain, unlimited, size, args.max_tokens)
            by_batch[str(size)] = speedup
            identical_by_batch &= identical
    finally:
        unlimited.engine.shutdown()
        plain.engine.shutdown()
    report["speedup_by_batch_without_cutoff"] = by_batch
    report["draft"] = await draft_pair(args)
    report.update(
        ngram_speedup_repetitive_b1=repetitive["speedup"],
        ngram_speedup_random_b1=random["speedup"],
        draft_speedup_b1=report["draft"]["speedup"],
        speedup_b32=speedup_b32,
        acceptance_rate=report["ngram_repetitive_b1"]["acceptance_rate"],
        mean_accepted_len=report["ngram_repetitive_b1"]["mean_accepted_len"],
        greedy_identical=all(
            (
                repetitive["identical"],
                random["identical"],
                identical_b32,
                identical_by_batch,
                report["draft"]["identical"],
            )
        ),  # fmt: skip
    )
    return report


async def draft_pair(args: argparse.Namespace) -> dict:
    """muse-small, plain and with a muse-tiny draft, on the bundled tokenizer."""
    from museserve.preprocess.muse_format import MuseFormat
    from museserve.preprocess.tokenizer import MuseTokenizer
    from tests.support import prepared_request

    tokenizer = MuseTokenizer.load(None)
    engine = {"context_length": 8192, "max_output_tokens": 1024, "kv_cache_bytes": 64 << 20, "stream_interval_ms": 0}
    small = PoolConfig(name="muse-small", model={"size": "small", "device": "cpu"}, engine=engine)

    def prepare(text: str, rid: str, max_tokens: int) -> PreparedRequest:
        prompt = tokenizer.encode_prompt(text)
        return prepared_request(rid, prompt, pool="muse-small", max_output_tokens=max_tokens, logprobs=True,
                                ignore_eos=True)  # fmt: skip

    plain = Side(with_speculation(small, method="off"), MuseFormat(tokenizer), prepare)
    spec = Side(
        with_speculation(small, method="draft", num_speculative_tokens=args.k, draft={"size": "tiny"}),
        MuseFormat(tokenizer),
        prepare,
    )
    try:
        result = await compare(plain, spec, RANDOM, args.runs, args.max_tokens)
    finally:
        plain.engine.shutdown()
        spec.engine.shutdown()
    return {"target": "muse-small (dummy)", "draft": "muse-tiny (dummy)", **result, **metrics_of(spec)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=4, help="speculative.num_speculative_tokens")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--out", default=".bench/spec_decode.json")
    args = parser.parse_args()
    write_report(Path(args.out), asyncio.run(run(args)))


if __name__ == "__main__":
    main()
