"""A pool whose KV cache holds fewer tokens than its context_length: the gateway, the
preprocess tier and both API edges use the smaller window, refuse over it with
INVALID_ARGUMENT (HTTP 400) naming the limit, report it, and never charge the rate limit for a
refused request. Pools are scripted; the preprocess tier and the quota are real (no Redis)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from starlette.requests import Request

from museserve.api.convert import model_info_to_pb
from museserve.api.grpc_api import GrpcChatApi
from museserve.api.openai import responses
from museserve.api.openai.http_api import OpenAIHttpApi
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.config import MuseServeConfig, parse_config
from museserve.domain import (
    ChatRequest,
    FinishReason,
    Identity,
    Message,
    Mode,
    ModeParams,
    Role,
    SamplingParams,
    TextPart,
    Usage,
)
from museserve.errors import InvalidArgument
from museserve.gateway.gateway import Gateway
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.v1 import chat_pb2 as pb
from tests.support import text_preprocess

WINDOW = 256  # 256 tokens of the tiny model at 512 bytes each, under a context_length of 4096
BURST = 1000
LIMITED = Identity(tenant="acme", user="bob", tier="metered")


def make_config() -> MuseServeConfig:
    engine = {"context_length": 4096, "max_output_tokens": 1000, "default_max_output_tokens": 16,
              "kv_cache_bytes": WINDOW * 512, "min_context_per_request": 128}  # fmt: skip
    tiers = {"default": {}, "metered": {"tenant": {"tokens_per_minute": 1, "token_burst": BURST}}}
    return parse_config({"pools": [{"name": "kvbound", "engine": engine}], "gateway": {"tiers": tiers}})


class RecordingPool:
    def __init__(self) -> None:
        self.calls: list[PreparedRequest] = []

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.calls.append(request)
        yield GenerationChunk(text="ok", num_new_tokens=1)
        usage = Usage(prompt_tokens=request.num_prompt_tokens, output_tokens=1)
        yield GenerationChunk(finish=FinishReason.STOP, usage=usage)


@pytest.fixture
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture
def gateway(pool: RecordingPool) -> Gateway:
    config = make_config()
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    return Gateway(config, text_preprocess(config), {"kvbound": pool}, quota=quota)


def chat(words: int, mode: Mode = Mode.INSTANT, **sampling: int) -> ChatRequest:
    return ChatRequest(
        request_id="r1",
        messages=(Message(Role.USER, (TextPart(" x" * words),)),),
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        mode=ModeParams(mode),
        identity=LIMITED,
    )


async def remaining_tokens(gateway: Gateway) -> int:
    admission = await gateway.quota.admit(LIMITED, 0)
    return int(dict(admission.metadata)["x-ratelimit-remaining-tokens"])


async def test_a_prompt_over_the_window_is_refused_before_any_charge(gateway: Gateway, pool: RecordingPool) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await gateway.chat(chat(300))
    assert refused.value.field == "messages"
    assert f"reads at most {WINDOW - 1} prompt tokens" in refused.value.message
    assert f"its KV cache holds {WINDOW} tokens" in refused.value.message
    assert gateway.quota.decisions_by_outcome == {"allowed": 0, "refused": 0, "unavailable": 0}
    assert await remaining_tokens(gateway) == BURST and pool.calls == []


async def test_prompt_plus_output_over_the_window_names_both_and_the_limit(gateway: Gateway) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await gateway.chat(chat(200, max_output_tokens=100))
    assert refused.value.field == "sampling.max_output_tokens"
    assert "plus max_output_tokens 100 exceeds the context window of 256 tokens of model kvbound" in str(refused.value)
    assert "(its KV cache holds 256 tokens)" in str(refused.value)
    assert await remaining_tokens(gateway) == BURST


async def test_the_output_cap_is_clamped_below_the_window(gateway: Gateway) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await gateway.chat(chat(5, max_output_tokens=WINDOW))  # under the configured 1000
    assert refused.value.field == "sampling.max_output_tokens" and f"between 1 and {WINDOW - 1}" in str(refused.value)
    with pytest.raises(InvalidArgument) as budget:
        await gateway.chat(chat(5, Mode.CONTEMPLATING))  # 4 agents' answers cannot fit 256 positions
    assert budget.value.field == "mode.num_agents" and "(its KV cache holds 256 tokens)" in str(budget.value)
    assert await remaining_tokens(gateway) == BURST


async def test_a_request_within_the_window_is_charged_and_served(gateway: Gateway, pool: RecordingPool) -> None:
    result = await gateway.chat(chat(100, max_output_tokens=16))
    assert result.text == "ok" and len(pool.calls) == 1
    prompt = pool.calls[0].num_prompt_tokens
    assert prompt + 16 <= WINDOW
    assert await remaining_tokens(gateway) <= BURST - prompt


async def test_count_tokens_and_list_models_report_the_window(gateway: Gateway) -> None:
    count = await gateway.count_tokens(chat(300))
    assert count.context_length == WINDOW and count.prompt_tokens > WINDOW
    ((info, is_default),) = gateway.list_models()
    assert (info.context_length, info.max_output_tokens, is_default) == (WINDOW, WINDOW - 1, True)
    assert gateway.windows["kvbound"].bound == "KV capacity"
    msg = model_info_to_pb(info, is_default)
    assert (msg.context_length, msg.max_output_tokens) == (WINDOW, WINDOW - 1)


class RpcContext:
    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.details = ""

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return []

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        pass


async def test_grpc_list_models_and_refusal(gateway: Gateway) -> None:
    api = GrpcChatApi(gateway)
    listed = await api.list_models(pb.ListModelsRequest(), RpcContext())
    assert [(m.name, m.context_length, m.max_output_tokens) for m in listed.models] == [("kvbound", 256, 255)]
    context = RpcContext()
    msg = pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text=" x" * 300)])])
    await api.chat(msg, context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "context window is 256 tokens" in context.details


def http_request(path: str = "/v1/models") -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "headers": []})


async def test_openai_models_report_the_window_and_an_over_window_chat_is_400(gateway: Gateway) -> None:
    api = OpenAIHttpApi(gateway)
    models = json.loads((await api.list_models(http_request())).body)
    responses.ModelList.model_validate(models)
    (model,) = models["data"]
    assert (model["context_length"], model["max_model_len"], model["max_output_tokens"]) == (256, 256, 255)
    one = json.loads((await api.retrieve_model("kvbound", http_request("/v1/models/kvbound"))).body)
    assert one["max_model_len"] == 256
    body = ChatCompletionRequest.model_validate(
        {"model": "kvbound", "messages": [{"role": "user", "content": " x" * 300}]}
    )
    response = await api.chat_completions(body, http_request("/v1/chat/completions"))
    assert (
        response.status_code == 400 and "context window is 256 tokens" in json.loads(response.body)["error"]["message"]
    )
