"""A second turn on a 64K document after other traffic evicted it from the KV cache: time to
first token with the second tier (host memory, and a file on disk) against without it."""

from __future__ import annotations

import asyncio
import random
import tempfile

from museserve.config import PoolConfig
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.bench.engine_side import prepared, run_one

DOCUMENT = 65_536
QUESTION = 64
CACHE_TOKENS = 81_920  # holds one document and a turn, not two documents


def tier_pool(tier: dict) -> PoolConfig:
    return PoolConfig(
        name="muse-tier",
        model={"size": "tiny", "device": "cpu"},
        engine={
            "context_length": CACHE_TOKENS,
            "max_output_tokens": 1024,
            "kv_cache_bytes": CACHE_TOKENS * 512,  # muse-tiny, float32: 512 bytes a token
            "stream_interval_ms": 0,
            "kv_tier": tier,
        },
    )


async def second_turn_ttft(pool: PoolConfig, tokenizer: MuseTokenizer, seed: int) -> dict:
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(32, 8000) for _ in range(n)]

    document, other = tokens(DOCUMENT), tokens(DOCUMENT)
    engine = build_engine(pool, MuseFormat(tokenizer))
    try:
        first = await run_one(engine, prepared(pool, document + tokens(QUESTION), 1))
        await run_one(engine, prepared(pool, other + tokens(QUESTION), 1))  # evicts the document
        second = await run_one(engine, prepared(pool, document + tokens(QUESTION), 1))
        blocks = engine.blocks
        return {
            "first_turn_ttft_s": first.ttft_s,
            "second_turn_ttft_s": second.ttft_s,
            "second_turn_cached_tokens": second.cached_tokens,
            "tier_hit_tokens": blocks.tier_hits,
            "tier_saved_blocks": blocks.tier_saves,
            "tier_loaded_blocks": blocks.tier_loads,
        }
    finally:
        engine.shutdown()


def tier_report(seed: int) -> dict:
    tokenizer = MuseTokenizer.load(None)
    tier_bytes = (DOCUMENT + 4096) * 512
    with tempfile.TemporaryDirectory(prefix="museserve-tier-") as directory:
        runs = {
            name: asyncio.run(second_turn_ttft(tier_pool(tier), tokenizer, seed))
            for name, tier in (
                ("none", {"bytes": 0}),
                ("memory", {"bytes": tier_bytes}),
                ("disk", {"bytes": tier_bytes, "path": directory}),
            )
        }
    base = runs["none"]["second_turn_ttft_s"]
    return {
        "document_tokens": DOCUMENT,
        "kv_cache_tokens": CACHE_TOKENS,
        "runs": runs,
        "tier_second_turn_ttft_ratio": runs["memory"]["second_turn_ttft_s"] / base,
        "disk_tier_second_turn_ttft_ratio": runs["disk"]["second_turn_ttft_s"] / base,
    }
