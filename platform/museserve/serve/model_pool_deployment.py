"""A model pool replica: one engine, streaming chunks to the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from museserve.config import PoolConfig
from museserve.engine.engine import MuseEngine
from museserve.logs import setup_logging
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.preprocess.tokenizer import MuseTokenizer


@serve.deployment
class ModelPoolDeployment:
    def __init__(self, pool: PoolConfig, tokenizer_path: str | None, log_level: str = "INFO"):
        setup_logging(log_level)
        self.engine = MuseEngine(pool, MuseTokenizer.load(tokenizer_path))

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        async for chunk in self.engine.generate(request):
            yield chunk

    def stats(self) -> dict:
        """Counters of this replica, including its most recent requests by id."""
        return self.engine.stats.snapshot()

    def __del__(self) -> None:
        self.engine.shutdown()
