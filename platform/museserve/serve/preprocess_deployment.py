"""The preprocess tier: chat template, tokenizer, image and audio encoders, on CPU."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from museserve.config import MuseServeConfig
from museserve.domain import ChatRequest
from museserve.logs import setup_logging
from museserve.messages import PreparedRequest, PromptCount
from museserve.preprocess.preprocessor import Preprocessor
from museserve.serve.preprocess_metrics import PreprocessMetrics


@serve.deployment
class PreprocessDeployment:
    def __init__(self, config: MuseServeConfig, log_level: str = "INFO"):
        setup_logging(log_level)
        self._pools = {p.name: p for p in config.pools}
        self._metrics = PreprocessMetrics()
        self._preprocessors = Preprocessor.for_pools(config)

    # Image URLs are fetched on the event loop; tokenizing a long prompt and decoding images
    # and audio take milliseconds of CPU or more: off the replica's event loop.
    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        preprocessor, config = self._preprocessors[pool], self._pools[pool]
        started = time.monotonic()
        fetched = await preprocessor.fetch_media(request, config)
        prepared = await asyncio.to_thread(preprocessor.prepare, request, config, fetched)
        self._metrics.prepared(pool, time.monotonic() - started, ((m.kind, m.num_tokens) for m in prepared.media))
        return prepared

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        preprocessor, config = self._preprocessors[pool], self._pools[pool]
        started = time.monotonic()
        fetched = await preprocessor.fetch_media(request, config)
        count = await asyncio.to_thread(preprocessor.count, request, config, fetched)
        self._metrics.counted(pool, time.monotonic() - started)
        return count
