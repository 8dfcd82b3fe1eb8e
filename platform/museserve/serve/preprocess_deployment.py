"""The preprocess tier: chat template, tokenizer, image and audio encoders, on CPU."""

from __future__ import annotations

import asyncio
import time

from ray import serve

from museserve.config import MuseServeConfig
from museserve.domain import ChatRequest
from museserve.logs import setup_logging
from museserve.messages import PreparedRequest, PromptCount
from museserve.preprocess.pool_preprocessors import PoolPreprocessors
from museserve.serve.autoscaling_stats import CPU, CpuMeter
from museserve.serve.preprocess_metrics import PreprocessMetrics


@serve.deployment
class PreprocessDeployment:
    def __init__(self, config: MuseServeConfig, log_level: str = "INFO"):
        setup_logging(log_level)
        self._metrics = PreprocessMetrics()
        self._preprocessors = PoolPreprocessors(config)
        self._cpu = CpuMeter()

    # Image URLs are fetched on the event loop; tokenizing a long prompt and decoding images
    # and audio take milliseconds of CPU or more: off the replica's event loop.
    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        preprocessor = self._preprocessors[pool]
        started = time.monotonic()
        fetched = await preprocessor.fetch_media(request)
        prepared = await asyncio.to_thread(preprocessor.prepare, request, fetched)
        self._metrics.prepared(pool, time.monotonic() - started, ((m.kind, m.num_tokens) for m in prepared.media))
        return prepared

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        preprocessor = self._preprocessors[pool]
        started = time.monotonic()
        fetched = await preprocessor.fetch_media(request)
        count = await asyncio.to_thread(preprocessor.count, request, fetched)
        self._metrics.counted(pool, time.monotonic() - started)
        return count

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Pulled by Serve for the tier's autoscaling policy: this replica's CPU use since the
        last pull (tokenizing and decoding media run on threads: `process_time` counts them)."""
        return {CPU: self._cpu.read()}
