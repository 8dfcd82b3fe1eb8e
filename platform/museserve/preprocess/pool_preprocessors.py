"""Each pool's `Preprocessor`, bound to that pool's config, for the tiers that prepare requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from museserve.config import MuseServeConfig, PoolConfig
from museserve.domain import ChatRequest
from museserve.messages import MediaSegment, PreparedRequest, PromptCount
from museserve.preprocess.media import Fetched
from museserve.preprocess.preprocessor import LivePrompt, Preprocessor


@dataclass(frozen=True, slots=True)
class PoolPreprocessor:
    """`preprocessor` is the one `Preprocessor.for_pools` built for `pool`."""

    preprocessor: Preprocessor
    pool: PoolConfig

    async def fetch_media(self, request: ChatRequest) -> Fetched:
        return await self.preprocessor.fetch_media(request, self.pool)

    def count(self, request: ChatRequest, fetched: Fetched | None = None) -> PromptCount:
        return self.preprocessor.count(request, self.pool, fetched)

    def prepare(self, request: ChatRequest, fetched: Fetched | None = None) -> PreparedRequest:
        return self.preprocessor.prepare(request, self.pool, fetched)

    def prepare_live(self, request: ChatRequest, history: Sequence[Sequence[MediaSegment]] = ()) -> LivePrompt:
        return self.preprocessor.prepare_live(request, self.pool, history)


class PoolPreprocessors:
    """One `PoolPreprocessor` per pool of the config, looked up by pool name."""

    def __init__(self, config: MuseServeConfig):
        preprocessors = Preprocessor.for_pools(config)
        self._by_name = {pool.name: PoolPreprocessor(preprocessors[pool.name], pool) for pool in config.pools}

    def __getitem__(self, pool: str) -> PoolPreprocessor:
        """Raises KeyError(pool) for a pool the config does not define."""
        return self._by_name[pool]
