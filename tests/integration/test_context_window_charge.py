"""The context window is enforced before the rate limit is charged, with the shared limiter on
a real `redis-server`: a request over a pool's window (its KV cache holds fewer tokens than its
context_length) is INVALID_ARGUMENT, runs no decision in Redis, and leaves the tenant's
remaining tokens as they were. No Ray: the gateway is built in process around a scripted pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from museserve.config import MuseServeConfig, parse_config
from museserve.domain import ChatRequest, FinishReason, Identity, Message, Role, SamplingParams, TextPart, Usage
from museserve.errors import InvalidArgument
from museserve.gateway.gateway import Gateway
from museserve.gateway.quota import QuotaGuard
from museserve.messages import GenerationChunk, PreparedRequest
from tests.redis_server import RedisServer
from tests.support import text_preprocess

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WINDOW = 256  # tokens of the tiny model (512 bytes each) in kv_cache_bytes, under a context_length of 4096
BURST = 1000


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def make_config(redis_url: str, prefix: str) -> MuseServeConfig:
    engine = {"context_length": 4096, "max_output_tokens": 1000, "default_max_output_tokens": 16,
              "kv_cache_bytes": WINDOW * 512, "min_context_per_request": 128}  # fmt: skip
    tiers = {"default": {"tenant": {"tokens_per_minute": 1, "token_burst": BURST}}}
    redis = {"url": redis_url, "timeout_ms": 1000, "key_prefix": prefix, "on_unavailable": "fail_closed"}
    return parse_config({"pools": [{"name": "kvbound", "engine": engine}], "gateway": {"tiers": tiers, "redis": redis}})


class CountingPool:
    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.calls += 1
        usage = Usage(prompt_tokens=request.num_prompt_tokens, output_tokens=0)
        yield GenerationChunk(finish=FinishReason.STOP, usage=usage)


def chat(identity: Identity, words: int, **sampling: int) -> ChatRequest:
    return ChatRequest(
        request_id=uuid.uuid4().hex,
        messages=(Message(Role.USER, (TextPart(" x" * words),)),),
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        identity=identity,
    )


async def test_an_over_window_request_leaves_the_tenants_tokens_in_redis_untouched(redis_server: RedisServer) -> None:
    prefix = f"cw{uuid.uuid4().hex[:8]}"
    config = make_config(redis_server.url, prefix)
    pool = CountingPool()
    gateway = Gateway(config, text_preprocess(config), {"kvbound": pool}, quota=QuotaGuard(config.gateway))
    identity = Identity(tenant=f"t-{uuid.uuid4().hex}", user="", tier="default")
    try:
        metadata: list[tuple[str, str]] = []
        served = await gateway.chat(chat(identity, 50), metadata.extend)
        remaining = int(dict(metadata)["x-ratelimit-remaining-tokens"])
        assert remaining <= BURST - served.usage.prompt_tokens and pool.calls == 1
        decisions = redis_server.evalsha_calls()

        for over in (chat(identity, 300), chat(identity, 200, max_output_tokens=100)):
            with pytest.raises(InvalidArgument) as refused:
                await gateway.chat(over)
            assert f"its KV cache holds {WINDOW} tokens" in refused.value.message
        assert redis_server.evalsha_calls() == decisions  # no decision ran, so nothing was charged
        assert pool.calls == 1

        probe = await gateway.quota.admit(identity, 0)  # a decision that charges nothing
        assert int(dict(probe.metadata)["x-ratelimit-remaining-tokens"]) == remaining
        assert redis_server.evalsha_calls() == decisions + 1
    finally:
        await gateway.close()
