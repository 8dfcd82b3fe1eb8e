"""Modes and media: what Contemplating costs over one agent, and what preprocessing media costs.

- `contemplating_wall_ratio`: wall time of a Contemplating request with 4 agents over the
  same request with 1 agent (same reasoning budget and answer length per agent, greedy,
  synthesis included on both sides), in-process on our engine. `agents_wall_ratio` is the
  same ratio for the agent phase alone: from the request's start to its last agent's end.
- `contemplating_prefill_ratio`: prompt tokens the engine computed (prompt minus prefix
  cache hits) for the 4 agents over those of the 1 agent: the conversation is computed
  once, the other agents compute only their angle turn.
- `image_preprocess_ms_p50`: `load_image` of a 1024x768 JPEG (decode, resize, patches).
- `audio_preprocess_ms_per_s`: `load_audio` of a 10 s 44.1 kHz stereo WAV, per second of audio.

    python -m tests.bench.bench_modes --out .bench/modes.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

from museserve.config import parse_config
from museserve.domain import ChatRequest, Message, Mode, ModeParams, Role, SamplingParams, TextPart
from museserve.engine.engine import MuseEngine
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.modes.contemplating import Contemplation
from museserve.preprocess.audio import load_audio
from museserve.preprocess.images import load_image
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests import audio_corpus, media_corpus
from tests.bench.machine import machine

PROMPT = "Three friends split a bill of 96 dollars; one pays twice as much as each of the others. " * 24


class Recording:
    """The engine, recording each pass's usage by request id."""

    def __init__(self, engine: MuseEngine):
        self.engine = engine
        self.usage: dict[str, tuple[int, int, int]] = {}  # id -> (prompt, cached, generated)
        self.ended: dict[str, float] = {}

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        generated = 0
        async for chunk in self.engine.generate(request):
            generated += chunk.num_new_tokens
            if chunk.usage is not None:
                self.usage[request.request_id] = (chunk.usage.prompt_tokens, chunk.usage.cached_tokens, generated)
                self.ended[request.request_id] = time.perf_counter()
            yield chunk


async def contemplate(args: argparse.Namespace, agents: int, rid: str) -> dict:
    config = parse_config(
        {
            "pools": [
                {
                    "name": "bench",
                    "modes": ["contemplating"],
                    "model": {"size": args.size, "seed": 0},
                    "engine": {"context_length": 8192, "max_output_tokens": 512, "default_max_output_tokens": 64},
                    "contemplating": {
                        "agent_answer_tokens": args.answer_tokens,
                        "synthesis_thinking_budget": args.budget,
                    },
                }
            ]
        }
    )
    pool = config.pools[0]
    tokenizer = MuseTokenizer.load(None)
    engine = build_engine(pool, MuseFormat(tokenizer))
    try:
        request = ChatRequest(
            rid,
            (Message(Role.USER, (TextPart(PROMPT),)),),
            sampling=SamplingParams(temperature=0.0, max_output_tokens=args.answer_tokens),
            mode=ModeParams(Mode.CONTEMPLATING, thinking_budget=args.budget, num_agents=max(agents, 2)),
        )
        prepared = Preprocessor(PoolModel.muse(tokenizer), config.preprocess.media, 600.0).prepare(request, pool)
        prepared = dataclasses.replace(prepared, num_agents=agents)  # 1 agent: the baseline (clients ask 2-8)
        recording = Recording(engine)
        started = time.perf_counter()
        async for _ in Contemplation(recording, tokenizer, pool.contemplating).generate(prepared):
            pass
        wall = time.perf_counter() - started
        agent_ids = [k for k in recording.usage if "#agent" in k]
        return {
            "wall_s": wall,
            "agents_wall_s": max(recording.ended[k] for k in agent_ids) - started,
            "agent_prefill_computed": sum(recording.usage[k][0] - recording.usage[k][1] for k in agent_ids),
            "agent_generated_tokens": [recording.usage[k][2] for k in sorted(agent_ids)],
        }
    finally:
        engine.shutdown()


def p50_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small")
    parser.add_argument("--budget", type=int, default=32, help="reasoning tokens per agent")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", default=".bench/modes.json")
    args = parser.parse_args()

    one = [asyncio.run(contemplate(args, 1, f"one-{i}")) for i in range(args.runs)]
    four = [asyncio.run(contemplate(args, 4, f"four-{i}")) for i in range(args.runs)]
    best = lambda runs, key: min(r[key] for r in runs)  # noqa: E731 - the least-disturbed run

    limits = parse_config({"pools": [{"name": "p"}]}).preprocess.media
    jpeg = media_corpus.jpeg(1024, 768)
    image_ms = p50_ms(lambda: load_image(jpeg, "image/jpeg", limits, "bench"), runs=20)
    wav = audio_corpus.encode(audio_corpus.tone(440.0, 10.0, 44_100, channels=2), 44_100)
    audio_ms = p50_ms(lambda: load_audio(wav, "wav", limits, "bench"), runs=9)

    result = {
        "benchmark": "modes",
        "machine": machine(),
        "model_size": args.size,
        "reasoning_budget_per_agent": args.budget,
        "answer_tokens_per_agent": args.answer_tokens,
        "contemplating_wall_ratio": best(four, "wall_s") / best(one, "wall_s"),
        "agents_wall_ratio": best(four, "agents_wall_s") / best(one, "agents_wall_s"),
        "contemplating_prefill_ratio": four[0]["agent_prefill_computed"] / one[0]["agent_prefill_computed"],
        "one_agent": one,
        "four_agents": four,
        "image_preprocess_ms_p50": image_ms,
        "audio_preprocess_ms_per_s": audio_ms / 10.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))


if __name__ == "__main__":
    main()
