"""Live voice on muse-tiny (the local setup's multimodal pool, float32 on this CPU), in one
process: voice sessions opened through the gateway (`voice.entry.open_voice`) over one engine.

- `ttft_after_speech_end_ms`: a 10 s utterance streamed at real time in 20 ms chunks; from the
  end of speech (the marker sent) to the first answer token. Baseline, measured in the same
  process on the same engine: the same audio as one WAV clip at that moment, prepared (decoded,
  log-mel, rendered) and answered as a ChatStream request is. `ttft_ratio_vs_whole_clip` =
  streamed / whole clip; goal <= 0.3.
- `realtime_factor`: seconds of speech one replica takes in per wall second, when 8 sessions
  send 10 s each as fast as they can, in 250 ms chunks (speech encoding included: it runs in
  this process too).
  Goal >= 10.
- `sessions_per_replica_at_realtime`: the most sessions (doubling from 4) streaming 4 s each at
  real time at once while each still gets its first token within 300 ms of its end of speech
  (p90) and no chunk is taken more than 500 ms after its real-time slot (a client's jitter
  buffer: beyond it, the sessions no longer keep up).

Medians of `--runs` runs.

    python -m tests.bench.bench_voice --out .bench/voice.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from museserve.config import load_config, parse_config
from museserve.domain import (
    AudioPart,
    ChatRequest,
    Message,
    ReasoningDelta,
    Role,
    SamplingParams,
    TextDelta,
    TextPart,
)
from museserve.gateway.gateway import Gateway
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.replica import build_engine
from museserve.voice.entry import open_voice
from museserve.voice.events import AnswerEvent, VoiceSettings
from tests.bench.bench_engine import source_state
from tests.bench.machine import machine
from tests.bench.report import write_report
from tests.support import text_preprocess
from tests.voice_support import chunks, speech, wav

CONFIG = Path(__file__).resolve().parents[2] / "deploy/local/museserve.yaml"
POOL = "muse-tiny"
RATE = 16_000
CHUNK_MS = 20
FAST_CHUNK_MS = 250  # faster than real time: fewer, larger chunks (voice.max_chunks_per_second)
SYSTEM = "Answer the question you hear."
SAMPLING = SamplingParams(temperature=0.0, max_output_tokens=8)
TTFT_BOUND_S, LAG_BOUND_S = 0.3, 0.5


def build():
    """(config, engine, gateway, preprocessor) for muse-tiny as shipped, on this CPU, with room
    for many sessions at once."""
    data = load_config(CONFIG).model_dump(mode="json")
    pool = next(p for p in data["pools"] if p["name"] == POOL)
    pool["model"]["device"] = "cpu"
    pool["engine"].update(max_running_requests=128, max_waiting_requests=256)
    data["pools"] = [pool]
    data["gateway"].update(default_model=POOL, routes={}, redis={"url": None})
    config = parse_config(data, source="bench")
    media = config.preprocess.media
    engine = build_engine(config.pools[0], pool_model(config.pools[0], media, None).chat_format, media=media)
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    gateway = Gateway(config, text_preprocess(config), {POOL: engine}, quota=quota)
    return config, engine, gateway, Preprocessor.for_pools(config)[POOL]


def conversation(request_id: str, speech_part: AudioPart | None = None) -> ChatRequest:
    messages = [Message(Role.SYSTEM, (TextPart(SYSTEM),))]
    if speech_part is not None:
        messages.append(Message(Role.USER, (speech_part,)))
    return ChatRequest(request_id, tuple(messages), model=POOL, sampling=SAMPLING)


async def voice_session(
    gateway: Gateway, rid: str, samples: np.ndarray, paced: bool, chunk_ms: int = CHUNK_MS
) -> tuple[float, float]:
    """(end of speech -> first answer token, s; worst lateness of a chunk against real time, s)."""
    session = await open_voice(gateway, VoiceSettings(conversation(rid), RATE))
    first_token = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async for event in session.events():
            answer = event.event if isinstance(event, AnswerEvent) else None
            if isinstance(answer, TextDelta | ReasoningDelta) and not first_token.done():
                first_token.set_result(time.monotonic())

    reader = asyncio.get_running_loop().create_task(read())
    lag = 0.0
    started = time.monotonic()
    for i, data in enumerate(chunks(samples, RATE, chunk_ms)):
        if paced:
            slot = started + i * chunk_ms / 1000
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            lag = max(lag, time.monotonic() - slot)
        await session.audio(data)
    ended = time.monotonic()
    await session.end_of_speech()
    ttft = await first_token - ended
    await session.finish()
    await reader
    return ttft, lag


async def whole_clip_ttft(engine, pre: Preprocessor, pool, rid: str, samples: np.ndarray) -> float:
    started = time.monotonic()
    request = conversation(rid, AudioPart(wav(samples, RATE), "wav"))
    prepared = await asyncio.to_thread(pre.prepare, request, pool)
    async for chunk in engine.generate(prepared):
        if chunk.text or chunk.reasoning:
            first = time.monotonic() - started
    return first


async def ttft(args, engine, gateway, pre, pool, run: int) -> tuple[float, float]:
    samples = speech(args.seconds, seed=100 + run)
    streamed, _ = await voice_session(gateway, f"stream-{run}", samples, paced=True)
    engine.blocks.drop_prefix_cache()  # the clip's prefill may not reuse the stream's KV
    whole = await whole_clip_ttft(engine, pre, pool, f"whole-{run}", samples)
    engine.blocks.drop_prefix_cache()
    return streamed, whole


async def realtime_factor(gateway, engine, sessions: int, seconds: float, run: int) -> float:
    clips = [speech(seconds, seed=200 + run * sessions + i) for i in range(sessions)]
    started = time.monotonic()
    await asyncio.gather(
        *(
            voice_session(gateway, f"fast-{run}-{i}", c, paced=False, chunk_ms=FAST_CHUNK_MS)
            for i, c in enumerate(clips)
        )
    )
    engine.blocks.drop_prefix_cache()
    return sessions * seconds / (time.monotonic() - started)


async def capacity(gateway, engine, seconds: float, limit: int) -> tuple[int, list[dict]]:
    trials, best, n = [], 0, 4
    while n <= limit:
        clips = [speech(seconds, seed=300 + i) for i in range(n)]
        results = await asyncio.gather(
            *(voice_session(gateway, f"cap-{n}-{i}", c, paced=True) for i, c in enumerate(clips))
        )
        engine.blocks.drop_prefix_cache()
        ttfts = sorted(t for t, _ in results)
        p90 = ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))]
        lag = max(lag for _, lag in results)
        ok = p90 <= TTFT_BOUND_S and lag <= LAG_BOUND_S
        trials.append(
            {"sessions": n, "ttft_p90_ms": round(p90 * 1000, 1), "max_lag_ms": round(lag * 1000, 1), "ok": ok}
        )
        if not ok:
            break
        best, n = n, n * 2
    return best, trials


async def run(args: argparse.Namespace) -> dict:
    config, engine, gateway, pre = build()
    pool = config.pools[0]
    try:
        await ttft(args, engine, gateway, pre, pool, -1)  # warm-up: model, features, kernels
        pairs = [await ttft(args, engine, gateway, pre, pool, run) for run in range(args.runs)]
        factors = [await realtime_factor(gateway, engine, 8, args.seconds, run) for run in range(args.runs)]
        sessions, trials = await capacity(gateway, engine, 4.0, args.max_sessions)
    finally:
        engine.shutdown()
        await gateway.close()
    streamed = statistics.median(s for s, _ in pairs)
    whole = statistics.median(w for _, w in pairs)
    return {
        "bench": "voice",
        "ttft_after_speech_end_ms": round(streamed * 1000, 1),
        "whole_clip_ttft_ms": round(whole * 1000, 1),
        "ttft_ratio_vs_whole_clip": round(streamed / whole, 3),
        "ttft_runs_ms": [{"streamed": round(s * 1000, 1), "whole_clip": round(w * 1000, 1)} for s, w in pairs],
        "realtime_factor": round(statistics.median(factors), 1),
        "realtime_factor_runs": [round(f, 1) for f in factors],
        "sessions_per_replica_at_realtime": sessions,
        "capacity_trials": trials,
        "setup": {"pool": POOL, "utterance_s": args.seconds, "chunk_ms": CHUNK_MS, "answer_tokens": 8,
                  "capacity_bounds": {"ttft_p90_ms": TTFT_BOUND_S * 1000, "max_lag_ms": LAG_BOUND_S * 1000}},
        "goals": {"ttft_ratio_vs_whole_clip": "<= 0.3", "realtime_factor": ">= 10"},
        "machine": machine(),
        "source": source_state(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-sessions", type=int, default=128)
    parser.add_argument("--out", default=".bench/voice.json")
    args = parser.parse_args()
    write_report(Path(args.out), asyncio.run(run(args)))


if __name__ == "__main__":
    main()
