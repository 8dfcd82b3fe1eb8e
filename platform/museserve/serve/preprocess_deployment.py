"""The preprocess tier: chat template, tokenizer, image and audio encoders, on CPU."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from museserve.config import MuseServeConfig
from museserve.domain import ChatRequest
from museserve.logs import setup_logging
from museserve.messages import PreparedRequest, PromptCount
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.preprocessor import Preprocessor
from museserve.serve.preprocess_metrics import PreprocessMetrics


@serve.deployment
class PreprocessDeployment:
    def __init__(self, config: MuseServeConfig, log_level: str = "INFO"):
        setup_logging(log_level)
        self._pools = {p.name: p for p in config.pools}
        self._metrics = PreprocessMetrics()
        media = config.preprocess.media
        self._preprocessors = {  # pools of one checkpoint share its chat format (`pool_model` caches it)
            pool.name: Preprocessor(
                pool_model(pool, media, config.preprocess.tokenizer),
                media,
                config.server.request_timeout_s,
                config.gateway.priority_of,
            )
            for pool in config.pools
        }

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
