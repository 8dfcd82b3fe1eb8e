"""The gateway's request path as a plain class: resolve the model, validate, prepare,
stream from the pool, and turn pool chunks into stream events.

It talks to the other tiers through two small protocols, so tests build it with the
preprocess and engine objects directly, and the Serve deployment with Ray handles.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from museserve.config import MuseServeConfig, PoolConfig
from museserve.domain import (
    ChatRequest,
    ChatResult,
    Finish,
    FinishReason,
    LogprobsDelta,
    ModelInfo,
    PositionLogprobs,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from museserve.errors import InvalidArgument, Unavailable
from museserve.gateway.validation import validate_request
from museserve.messages import GenerationChunk, PreparedRequest, PromptCount

logger = logging.getLogger(__name__)


class PreprocessClient(Protocol):
    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest: ...

    async def count(self, request: ChatRequest, pool: str) -> PromptCount: ...


class PoolClient(Protocol):
    def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]: ...


class Gateway:
    def __init__(self, config: MuseServeConfig, preprocess: PreprocessClient, pools: Mapping[str, PoolClient]):
        missing = {p.name for p in config.pools} - set(pools)
        if missing:
            raise ValueError(f"no client for pools: {', '.join(sorted(missing))}")
        self.config = config
        self._preprocess = preprocess
        self._pools = pools

    def list_models(self) -> list[tuple[ModelInfo, bool]]:
        default = self.config.default_pool.name
        pools = sorted(self.config.pools, key=lambda p: p.name != default)
        return [
            (ModelInfo(p.name, p.engine.context_length, p.engine.max_output_tokens, p.modes), p.name == default)
            for p in pools
        ]

    def resolve_pool(self, request: ChatRequest) -> PoolConfig:
        if not request.model:
            return self.config.default_pool
        for pool in self.config.pools:
            if pool.name == request.model:
                return pool
        known = ", ".join(p.name for p in self.config.pools)
        raise InvalidArgument(f"unknown model {request.model!r} (served: {known})", field="model")

    async def count_tokens(self, request: ChatRequest) -> PromptCount:
        pool = self.resolve_pool(request)
        validate_request(request, pool, self.config.gateway.limits)
        return await self._preprocess.count(request, pool.name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Events in order: deltas, then one Usage, then one Finish. Errors are MuseErrors."""
        pool = self.resolve_pool(request)
        validate_request(request, pool, self.config.gateway.limits)
        prepared = await self._preprocess.prepare(request, pool.name)
        finished = False
        async for chunk in self._pools[pool.name].generate(prepared):
            if chunk.reasoning:
                yield ReasoningDelta(chunk.reasoning)
            if chunk.text:
                yield TextDelta(chunk.text)
            if chunk.logprobs:
                yield LogprobsDelta(chunk.logprobs)
            if chunk.finish is not None:
                yield chunk.usage or Usage(prompt_tokens=prepared.num_prompt_tokens)
                yield Finish(chunk.finish, pool.name)
                finished = True
        if not finished:
            logger.warning("request %s: pool %s ended its stream without finishing", request.request_id, pool.name)
            raise Unavailable(f"model {pool.name} ended the stream early; the request may be retried")

    async def chat(self, request: ChatRequest) -> ChatResult:
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        logprobs: list[PositionLogprobs] = []
        usage, finish, model = Usage(), FinishReason.STOP, ""
        async for event in self.stream(request):
            match event:
                case TextDelta(t):
                    text.append(t)
                case ReasoningDelta(t):
                    reasoning.append(t)
                case ToolCallEvent(call):
                    calls.append(call)
                case LogprobsDelta(positions):
                    logprobs.extend(positions)
                case Usage():
                    usage = event
                case Finish(reason, pool):
                    finish, model = reason, pool
        return ChatResult("".join(text), "".join(reasoning), tuple(calls), usage, finish, model, tuple(logprobs))
