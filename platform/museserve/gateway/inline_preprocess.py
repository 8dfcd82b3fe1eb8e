"""Text-only requests are tokenized in the gateway replica; media goes to the preprocess tier.

Tokenizing a chat prompt costs tens of microseconds per kilobyte, far less than a hop to
another Serve deployment (milliseconds), so the hop is kept for what needs it: decoding
images and audio, which is heavy and must not run on the gateway's event loop. Long texts
are tokenized in a worker thread so the loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from museserve.config import MuseServeConfig
from museserve.domain import ChatRequest, TextPart
from museserve.gateway.gateway import PreprocessClient
from museserve.messages import PreparedRequest, PromptCount
from museserve.preprocess.pool_preprocessors import PoolPreprocessors

T = TypeVar("T")

THREAD_ABOVE_CHARS = 32_768  # below this, tokenizing takes less time than a thread hand-off


def text_only(request: ChatRequest) -> bool:
    return all(isinstance(part, TextPart) for message in request.messages for part in message.parts)


def _text_chars(request: ChatRequest) -> int:
    prompt = request.prompt.text if request.prompt is not None else None
    return len(prompt or "") + sum(len(part.text) for message in request.messages for part in message.parts)


class InlineTextPreprocess:
    """A PreprocessClient: text-only requests here, the rest through `remote`."""

    def __init__(self, config: MuseServeConfig, remote: PreprocessClient):
        self._remote = remote
        self._preprocessors = PoolPreprocessors(config)

    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        if not text_only(request):
            return await self._remote.prepare(request, pool)
        return await self._run(self._preprocessors[pool].prepare, request)

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        if not text_only(request):
            return await self._remote.count(request, pool)
        return await self._run(self._preprocessors[pool].count, request)

    async def _run(self, method: Callable[[ChatRequest], T], request: ChatRequest) -> T:
        if _text_chars(request) > THREAD_ABOVE_CHARS:
            return await asyncio.to_thread(method, request)
        return method(request)
