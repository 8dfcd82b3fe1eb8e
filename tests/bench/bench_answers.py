"""n answers from one request, and a stored conversation's follow-up, on the real default
model (SmolLM2-135M, the local setup's pool), through the gateway and engine in-process.

- `n4_wall_ratio`: wall time of one request with n=4 over four separate requests sent at once
  (same prompt, same seeds, same answer budget); `n4_prefill_ratio`: the prompt tokens the
  engine computed (prompt minus prefix-cache hits) for the n=4 request over the four. The n
  answers share one prefill; four requests that arrive together each compute theirs.
- `followup_ttft_ratio`: time to the first answer token of a follow-up that names its stored
  conversation (`previous_response_id`) over the same conversation sent whole by a caller
  with no cached prefix (another tenant: the prefix cache is salted per tenant).
Runs alternate and each side reports its median, after a warm-up of each.

    python -m tests.bench.bench_answers --out .bench/answers.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from museserve.config import MuseServeConfig, load_config
from museserve.domain import ChatRequest, Identity, Message, Role, SamplingParams, TextDelta, TextPart
from museserve.engine.engine import MuseEngine
from museserve.gateway.gateway import Gateway
from museserve.messages import GenerationChunk, PreparedRequest, PromptCount
from museserve.modes.dispatch import ReplicaModes
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from tests.bench.machine import machine
from tests.bench.report import write_report

CONFIG = Path(__file__).resolve().parents[2] / "deploy/local/museserve.yaml"
POOL = "smollm2-135m"
STORY = (
    "The harbour town kept its lighthouse lit for two hundred years. Every keeper wrote the weather, the ships "
    "that passed and one sentence about the day into a ledger that now fills a whole shelf. "
)


class Local:
    """The preprocess tier in this process."""

    def __init__(self, config: MuseServeConfig):
        self._config = config
        self._preprocessors = Preprocessor.for_pools(config)

    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        return self._preprocessors[pool].prepare(request, self._config.pool(pool))

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        return self._preprocessors[pool].count(request, self._config.pool(pool))


class Recording:
    """The engine, recording each request's prompt and cached tokens by id."""

    def __init__(self, engine: MuseEngine):
        self.engine = engine
        self.usage: dict[str, tuple[int, int]] = {}

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in self.engine.generate(request):
            if chunk.usage is not None and chunk.choice_finish is None:
                self.usage[request.request_id] = (chunk.usage.prompt_tokens, chunk.usage.cached_tokens)
            yield chunk

    def computed(self, prefix: str) -> int:
        return sum(p - c for rid, (p, c) in self.usage.items() if rid.startswith(prefix))


def ask(rid: str, text: str, tenant: str, **fields) -> ChatRequest:
    return ChatRequest(rid, (Message(Role.USER, (TextPart(text),)),), identity=Identity(tenant), **fields)


async def first_token_s(gateway: Gateway, request: ChatRequest) -> float:
    started = time.perf_counter()
    first = None
    async for event in gateway.stream(request):
        if first is None and isinstance(event, TextDelta):
            first = time.perf_counter() - started
    assert first is not None, "the follow-up answered nothing"
    return first


async def run(args: argparse.Namespace) -> dict:
    config = load_config(CONFIG)
    pool = config.pool(POOL)
    engine = build_engine(pool, pool_model(pool, config.preprocess.media, None).chat_format)
    recording = Recording(engine)
    modes = ReplicaModes(recording, engine.tokenizer, pool.contemplating)  # type: ignore[arg-type]
    gateway = Gateway(config, Local(config), {POOL: modes, **{p.name: modes for p in config.pools if p.name != POOL}})
    sampling = SamplingParams(temperature=0.8, seed=11, max_output_tokens=args.answer_tokens, ignore_eos=True)
    n4, four, follow, cold = [], [], [], []
    try:
        for run_index in range(args.runs + 1):  # run 0 warms both sides up and is not counted
            prompt = f"Ledger {run_index}. " + STORY * args.story_repeats + "Summarise the ledger's purpose."
            tag = f"r{run_index}"
            started = time.perf_counter()
            await gateway.chat(ask(f"{tag}-n4", prompt, "bench", sampling=replace(sampling, n=4)))
            n4_s = time.perf_counter() - started
            other = prompt.replace("Ledger", "Log")  # no prefix shared with the n=4 request
            started = time.perf_counter()
            await asyncio.gather(*(gateway.chat(ask(f"{tag}-one{i}", other, "bench", sampling=replace(sampling, seed=11 + i)))
                for i in range(4)))  # fmt: skip
            four_s = time.perf_counter() - started
            first = await gateway.chat(ask(f"{tag}-turn1", prompt, f"conv{run_index}", store=True, sampling=sampling))
            follow_up = ask(f"{tag}-turn2", "And in one word?", f"conv{run_index}", previous_response_id=first.response_id,
                            sampling=sampling)  # fmt: skip
            whole = await gateway.conversations.resolve(follow_up)
            follow_s = await first_token_s(gateway, follow_up)
            cold_request = ChatRequest(
                f"{tag}-cold", whole.messages, identity=Identity(f"cold{run_index}"), sampling=sampling
            )
            cold_s = await first_token_s(gateway, cold_request)
            if run_index:
                n4.append((n4_s, recording.computed(f"{tag}-n4")))
                four.append((four_s, recording.computed(f"{tag}-one")))
                follow.append((follow_s, recording.usage[f"{tag}-turn2"]))
                cold.append((cold_s, recording.usage[f"{tag}-cold"]))
    finally:
        await gateway.close()
        engine.shutdown()
    median = lambda xs: statistics.median(x[0] for x in xs)  # noqa: E731
    return {
        "benchmark": "answers",
        "machine": machine(),
        "model": pool.model.path,
        "runs": args.runs,
        "answer_tokens": args.answer_tokens,
        "prompt_tokens": follow[0][1][0] if follow else None,
        "n4_wall_s": median(n4),
        "four_requests_wall_s": median(four),
        "n4_wall_ratio": median(n4) / median(four),
        "n4_prefill_tokens": n4[0][1],
        "four_requests_prefill_tokens": four[0][1],
        "n4_prefill_ratio": n4[0][1] / four[0][1],
        "followup_ttft_s": median(follow),
        "cold_ttft_s": median(cold),
        "followup_ttft_ratio": median(follow) / median(cold),
        "followup_prompt_and_cached_tokens": follow[0][1],
        "cold_prompt_and_cached_tokens": cold[0][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--story-repeats", type=int, default=12, help="about 40 tokens each")
    parser.add_argument("--out", default=".bench/answers.json")
    args = parser.parse_args()
    write_report(Path(args.out), asyncio.run(run(args)))


if __name__ == "__main__":
    main()
