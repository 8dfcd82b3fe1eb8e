"""Speculative decoding against plain decoding, in one process, through the engine.

- SmolLM2-135M (the local setup's real pool) with n-gram prompt lookup, greedy:
  - `ngram_speedup_repetitive_b1`: decode tokens/s of one request at a time whose answer quotes
    its prompt (code edits and extraction), speculation over plain;
  - `ngram_speedup_random_b1`: the same where nothing is quoted (stories, explanations);
  - `speedup_b32`: output tokens/s of 32 requests at once (the repetitive prompts), where the
    pool's per-step cutoff (`speculative.max_batch`) turns speculation off;
  - `speedup_by_batch_without_cutoff`: the same at 1..64 requests with the cutoff lifted: where
    verification stops paying on this machine (the default cutoff's evidence).
- muse-small with a muse-tiny draft (seeded dummy weights, the bundled tokenizer): `draft_speedup_b1`.
  Two unrelated random models agree on almost nothing, so this measures what the draft's passes
  cost when its proposals fail and adaptivity pauses them; a trained pair is what gains.

Decode tokens/s: (tokens - 1) / (last token's time - first token's time), per request, the
median over runs; each side runs in an engine of its own, one after the other in this process
(two live engines share the cores badly). `greedy_identical`: every speculative answer here
equals the plain one, token for token.

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
# Edits and extraction whose answers quote the code (SmolLM2 does quote in these; asked to add a
# docstring to a class or to merge, it rewrites them instead, which is not this workload).
REPETITIVE = (
    f"Add a docstring to this function. Reply with the complete updated code only.\n{CODE[0]}",
    f"Extract every function call in this code and list them one per line, quoting each call exactly.\n{CODE[0]}",
    f"Convert this code to use 2-space indentation. Reply with the full code only.\n{CODE[1]}",
    f"Rewrite this code with type hints added. Reply with the full code only.\n{CODE[2]}",
)
RANDOM = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten year old.",
    "Give three tips for learning to play the guitar, with a sentence on each.",
)


def with_speculation(pool: PoolConfig, **fields) -> PoolConfig:
    """`pool` with these speculative settings, and room for 64 running requests."""
    update = {"speculative": SpeculativeConfig(**fields), "max_running_requests": 64, "max_waiting_requests": 128}
    return pool.model_copy(update={"engine": pool.engine.model_copy(update=update)})


class Side:
    """One engine, and the requests it answered. One at a time: a second engine in the process
    brings a second OpenMP pool, and on a CPU the two slow each other down (`runner.sampling`)."""

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

    async def b1(self, texts: tuple[str, ...], runs: int, max_tokens: int) -> tuple[list[list[int]], float]:
        """Each text answered alone `runs` times: the answers, and the median decode tokens/s."""
        answers, rates = [], []
        for _ in range(runs):
            for text in texts:
                tokens, rate = await self.answer(text, max_tokens)
                answers.append(tokens)
                rates.append(rate)
        return answers, statistics.median(rates)

    async def batch(self, size: int, max_tokens: int) -> tuple[list[list[int]], float]:
        """`size` repetitive requests at once: their answers and the output tokens/s of the whole."""
        texts = [REPETITIVE[i % len(REPETITIVE)] + f"\n# {i}" for i in range(size)]
        started = time.perf_counter()
        results = await asyncio.gather(*(self.answer(t, max_tokens) for t in texts))
        answers = [tokens for tokens, _ in results]
        return answers, sum(len(a) for a in answers) / (time.perf_counter() - started)

    def speculation(self) -> dict:
        m = self.engine.metrics
        positions = m.spec_accepted_per_position
        return {
            "drafts": m.spec_drafts,
            "draft_tokens": m.spec_draft_tokens,
            "accepted_tokens": m.spec_accepted_tokens,
            "acceptance_rate": m.spec_acceptance_rate,
            "mean_accepted_len": m.spec_mean_accepted_length,
            "accepted_per_position": [positions[i] for i in range(len(positions))],
        }

    async def close(self) -> None:
        self.engine.shutdown(wait=True)  # its device thread, and the OpenMP pool it owns, end here


async def session(pool: PoolConfig, chat_format, prepare, args: argparse.Namespace, *, b1: bool, batches: list[int]):
    """One engine's measurements: b1 on both workloads (after a warm-up), then each batch size."""
    side = Side(pool, chat_format, prepare)
    try:
        await side.answer(REPETITIVE[0], 16)  # warm-up, not counted
        result: dict = {}
        if b1:
            result["repetitive"] = await side.b1(REPETITIVE, args.runs, args.max_tokens)
            result["speculation_repetitive"] = side.speculation()
            result["random"] = await side.b1(RANDOM, args.runs, args.max_tokens)
        result["batches"] = {size: await side.batch(size, args.max_tokens) for size in batches}
        result["speculation"] = side.speculation()
        return result
    finally:
        await side.close()


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

    ngram = {"method": "ngram", "num_speculative_tokens": args.k}
    batches = sorted({*args.batches, 32})  # the cutoff's evidence: where speculation stops paying
    plain = await session(with_speculation(real, method="off"), chat_format, prepare, args, b1=True, batches=batches)
    spec = await session(with_speculation(real, **ngram), chat_format, prepare, args, b1=True, batches=[32])
    unlimited = await session(
        with_speculation(real, **ngram, max_batch=128), chat_format, prepare, args, b1=False, batches=batches
    )
    speedup = lambda ours, theirs: ours[1] / theirs[1]  # noqa: E731
    identical = (
        plain["repetitive"][0] == spec["repetitive"][0]
        and plain["random"][0] == spec["random"][0]
        and plain["batches"][32][0] == spec["batches"][32][0]
        and all(plain["batches"][n][0] == unlimited["batches"][n][0] for n in batches)
    )
    draft = await draft_pair(args)
    return {
        "benchmark": "spec_decode",
        "machine": machine(),
        "source": source_state(),
        "model": real.model.path,
        "max_tokens": args.max_tokens,
        "num_speculative_tokens": args.k,
        "ngram_speedup_repetitive_b1": speedup(spec["repetitive"], plain["repetitive"]),
        "ngram_speedup_random_b1": speedup(spec["random"], plain["random"]),
        "draft_speedup_b1": draft["speedup"],
        "speedup_b32": speedup(spec["batches"][32], plain["batches"][32]),
        "acceptance_rate": spec["speculation_repetitive"]["acceptance_rate"],
        "mean_accepted_len": spec["speculation_repetitive"]["mean_accepted_len"],
        "greedy_identical": identical and draft["identical"],
        "decode_tokens_per_s_b1": {
            "repetitive": {"plain": plain["repetitive"][1], "ngram": spec["repetitive"][1]},
            "random": {"plain": plain["random"][1], "ngram": spec["random"][1]},
        },
        "ngram_repetitive_b1": spec["speculation_repetitive"],
        "b32_tokens_per_s": {
            "plain": plain["batches"][32][1],
            "ngram": spec["batches"][32][1],
            "max_batch": spec_limit(real),
        },  # fmt: skip
        "speedup_by_batch_without_cutoff": {
            str(n): speedup(unlimited["batches"][n], plain["batches"][n]) for n in batches
        },
        "draft": draft,
    }


def spec_limit(pool: PoolConfig) -> int:
    return SpeculativeConfig(method="ngram").batch_limit(on_accelerator=pool.model.device == "cuda")


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

    results = []
    for speculative in (
        {"method": "off"},
        {"method": "draft", "num_speculative_tokens": args.k, "draft": {"size": "tiny"}},
    ):
        side = Side(with_speculation(small, **speculative), MuseFormat(tokenizer), prepare)
        try:
            await side.answer(RANDOM[0], 16)
            results.append((await side.b1(RANDOM, args.runs, args.max_tokens), side.speculation()))
        finally:
            await side.close()
    (plain, _), (spec, speculation) = results
    return {
        "target": "muse-small (dummy)",
        "draft": "muse-tiny (dummy)",
        "plain_tokens_per_s": plain[1],
        "spec_tokens_per_s": spec[1],
        "speedup": spec[1] / plain[1],
        "identical": plain[0] == spec[0],
        **speculation,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--k", type=int, default=4, help="speculative.num_speculative_tokens")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--out", default=".bench/spec_decode.json")
    args = parser.parse_args()
    write_report(Path(args.out), asyncio.run(run(args)))


if __name__ == "__main__":
    main()
