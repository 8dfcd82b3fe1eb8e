"""LoRA adapters through the real gateway and both API edges: the adapter (or the caller's
default) reaches the pool's PreparedRequest, refusals (NOT_FOUND, PERMISSION_DENIED) come before
any rate-limit charge or pool call, and ListModels and `/v1/models` list what each caller may use.
Pools are scripted; the in-process text preprocessing and the quota are real (no Redis)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from starlette.requests import Request

from museserve.api.grpc_api import GrpcChatApi
from museserve.api.openai import responses
from museserve.api.openai.completions_schemas import CompletionRequest
from museserve.api.openai.http_api import OpenAIHttpApi
from museserve.api.openai.responses_http import ResponsesHttpApi
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.config import MuseServeConfig, parse_config
from museserve.domain import ChatRequest, FinishReason, Identity, Message, Role, TextPart, Usage
from museserve.errors import NotFound, PermissionDenied
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import key_digest
from museserve.gateway.observer import CountingObserver
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.v1 import chat_pb2 as pb
from tests.support import text_preprocess

KEY_ANY, KEY_ACME, KEY_NONE = "sk-any", "sk-acme", "sk-none"  # every adapter; acme's own; none
NO_CHARGE = {"allowed": 0, "refused": 0, "unavailable": 0}


def make_config(tmp_path: Path) -> MuseServeConfig:
    store = tmp_path / "adapters"
    for name in ("support", "acme"):
        (store / name).mkdir(parents=True)
        (store / name / "adapter_config.json").write_text("{}")
    keys = [
        {"sha256": key_digest(KEY_ANY), "tenant": "initech"},
        {"sha256": key_digest(KEY_ACME), "tenant": "acme"},
        {"sha256": key_digest(KEY_NONE), "tenant": "globex", "tier": "basic"},
    ]
    limits = {"requests_per_minute": 1, "request_burst": 100}
    return parse_config(
        {
            "pools": [{"name": "main", "lora": {"directory": str(store)}}, {"name": "plain"}],
            "gateway": {
                "auth": "api_key",
                "api_keys": keys,
                "tiers": {"default": {"tenant": limits}, "basic": {"tenant": limits, "adapters": []}},
                "tenants": {"acme": {"adapters": ["main:acme"], "default_adapter": "main:acme"}},
            },
        }
    )


class RecordingPool:
    def __init__(self) -> None:
        self.calls: list[PreparedRequest] = []

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.calls.append(request)
        yield GenerationChunk(text="ok", num_new_tokens=1)
        yield GenerationChunk(finish=FinishReason.STOP, usage=Usage(request.num_prompt_tokens, 0, 0, 1))


@pytest.fixture
def pool() -> RecordingPool:
    return RecordingPool()


@pytest.fixture
def gateway(tmp_path: Path, pool: RecordingPool) -> Gateway:
    config = make_config(tmp_path)
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    pools = {"main": pool, "plain": RecordingPool()}
    return Gateway(config, text_preprocess(config), pools, quota=quota, observer=CountingObserver())


def chat(adapter: str = "", tenant: str = "initech", tier: str = "default", model: str = "main") -> ChatRequest:
    return ChatRequest(
        request_id="r1",
        messages=(Message(Role.USER, (TextPart("hello there"),)),),
        model=model,
        adapter=adapter,
        identity=Identity(tenant=tenant, user="bob", tier=tier),
    )


async def test_a_named_adapter_reaches_the_pool_and_is_reported(gateway: Gateway, pool: RecordingPool) -> None:
    metadata: list[tuple[str, str]] = []
    result = await gateway.chat(chat("support"), metadata.extend)
    assert pool.calls[0].adapter == "support" and result.model == "main"
    assert ("x-museserve-adapter", "support") in metadata and ("x-served-by", "main") in metadata
    await gateway.chat(chat())
    assert pool.calls[1].adapter == ""  # the base model


async def test_a_request_naming_none_gets_its_tenants_default(gateway: Gateway, pool: RecordingPool) -> None:
    metadata: list[tuple[str, str]] = []
    await gateway.chat(chat(tenant="acme"), metadata.extend)
    assert pool.calls[0].adapter == "acme" and ("x-museserve-adapter", "acme") in metadata
    await gateway.chat(chat(tenant="acme", model="plain"))  # its default is main's
    assert len(pool.calls) == 1


async def test_an_adapter_the_model_lacks_is_not_found_before_any_charge(gateway: Gateway, pool: RecordingPool) -> None:
    with pytest.raises(NotFound) as refused:
        await gateway.chat(chat("nosuch"))
    assert refused.value.field == "adapter" and "'nosuch'" in str(refused.value) and "'main'" in str(refused.value)
    with pytest.raises(NotFound):
        await gateway.count_tokens(chat("nosuch"))
    assert gateway.quota.decisions_by_outcome == NO_CHARGE and pool.calls == []
    assert ("admitted", "default") not in gateway.observer.decisions  # type: ignore[attr-defined]


async def test_an_adapter_the_caller_may_not_use_is_denied_before_any_charge(
    gateway: Gateway, pool: RecordingPool
) -> None:
    with pytest.raises(PermissionDenied) as refused:
        await gateway.chat(chat("support", tenant="acme"))
    assert refused.value.field == "adapter" and "'support'" in str(refused.value)
    with pytest.raises(PermissionDenied):
        await gateway.chat(chat("support", tenant="globex", tier="basic"))
    assert gateway.quota.decisions_by_outcome == NO_CHARGE and pool.calls == []


def test_list_models_reports_the_adapters_each_caller_may_use(gateway: Gateway) -> None:
    def listed(caller: Identity | None) -> dict[str, tuple[str, ...]]:
        return {info.name: info.adapters for info, _ in gateway.list_models(caller)}

    assert listed(Identity("initech")) == {"main": ("acme", "support"), "plain": ()}
    assert listed(Identity("acme")) == {"main": ("acme",), "plain": ()}
    assert listed(Identity("globex", tier="basic")) == {"main": (), "plain": ()}
    assert listed(None) == {"main": (), "plain": ()}  # no caller: the stores are not read


class RpcContext:
    def __init__(self, key: str) -> None:
        self.metadata = [("x-api-key", key)]
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailers: list[tuple[str, Any]] = []

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata) -> None:
        self.trailers = list(trailing_metadata)


def grpc_chat(adapter: str) -> pb.ChatRequest:
    user = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hello")])
    return pb.ChatRequest(model="main", adapter=adapter, messages=[user])


async def test_grpc_list_models_per_caller(gateway: Gateway) -> None:
    api = GrpcChatApi(gateway)
    for key, adapters in ((KEY_ANY, ["acme", "support"]), (KEY_ACME, ["acme"]), (KEY_NONE, [])):
        listed = await api.list_models(pb.ListModelsRequest(), RpcContext(key))
        assert [(m.name, list(m.adapters)) for m in listed.models] == [("main", adapters), ("plain", [])]


async def test_grpc_chat_with_an_adapter_and_its_refusals(gateway: Gateway, pool: RecordingPool) -> None:
    api = GrpcChatApi(gateway)
    context = RpcContext(KEY_ANY)
    answer = await api.chat(grpc_chat("support"), context)
    assert answer.text == "ok" and pool.calls[0].adapter == "support"
    assert ("x-museserve-adapter", "support") in context.trailers
    denied = RpcContext(KEY_ACME)
    await api.chat(grpc_chat("support"), denied)
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED and "'support'" in denied.details
    missing = RpcContext(KEY_ANY)
    await api.chat(grpc_chat("nosuch"), missing)
    assert missing.code == grpc.StatusCode.NOT_FOUND and "'nosuch'" in missing.details and "'main'" in missing.details
    assert len(pool.calls) == 1


def http_request(key: str, path: str = "/v1/models") -> Request:
    headers = [(b"authorization", f"Bearer {key}".encode())]
    return Request({"type": "http", "method": "POST", "path": path, "headers": headers})


async def models_listed(api: OpenAIHttpApi, key: str) -> list[dict[str, Any]]:
    body = json.loads((await api.list_models(http_request(key))).body)
    responses.ModelList.model_validate(body)
    return body["data"]


async def test_v1_models_lists_each_usable_adapter_after_the_base_models(gateway: Gateway) -> None:
    api = OpenAIHttpApi(gateway)
    models = await models_listed(api, KEY_ANY)
    assert [m["id"] for m in models] == ["main", "plain", "main:acme", "main:support"]
    assert [m.get("parent") for m in models] == [None, None, "main", "main"]
    assert models[3]["max_model_len"] == models[0]["max_model_len"] and not models[3]["is_default"]
    assert [m["id"] for m in await models_listed(api, KEY_ACME)] == ["main", "plain", "main:acme"]
    assert [m["id"] for m in await models_listed(api, KEY_NONE)] == ["main", "plain"]
    one = await api.retrieve_model("main:support", http_request(KEY_ANY, "/v1/models/main:support"))
    assert one.status_code == 200 and json.loads(one.body)["parent"] == "main"
    hidden = await api.retrieve_model("main:support", http_request(KEY_ACME, "/v1/models/main:support"))
    assert hidden.status_code == 404


def chat_body(model: str, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})  # fmt: skip


async def test_chat_completions_name_the_adapter_as_sent(gateway: Gateway, pool: RecordingPool) -> None:
    api = OpenAIHttpApi(gateway)
    answer = await api.chat_completions(chat_body("main:support"), http_request(KEY_ANY))
    assert json.loads(answer.body)["model"] == "main:support" and pool.calls[0].adapter == "support"
    assert answer.headers["x-museserve-adapter"] == "support"
    streamed = await api.chat_completions(chat_body("main:support", stream=True), http_request(KEY_ANY))
    lines = [line async for line in streamed.body_iterator]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines if line != "data: [DONE]\n\n"]
    assert chunks and {c["model"] for c in chunks} == {"main:support"} and pool.calls[1].adapter == "support"
    bare = await api.chat_completions(chat_body("main"), http_request(KEY_ACME))
    assert json.loads(bare.body)["model"] == "main" and pool.calls[2].adapter == "acme"  # its default, unnamed


async def test_chat_completions_refusals_are_403_and_404_on_the_model_field(
    gateway: Gateway, pool: RecordingPool
) -> None:
    api = OpenAIHttpApi(gateway)
    denied = await api.chat_completions(chat_body("main:support"), http_request(KEY_ACME))
    error = json.loads(denied.body)["error"]
    assert denied.status_code == 403 and error["param"] == "model" and "'support'" in error["message"]
    missing = await api.chat_completions(chat_body("main:nosuch", stream=True), http_request(KEY_ANY))
    error = json.loads(missing.body)["error"]
    assert missing.status_code == 404 and error["param"] == "model" and "'nosuch'" in error["message"]
    assert gateway.quota.decisions_by_outcome == NO_CHARGE and pool.calls == []


async def test_completions_take_an_adapter(gateway: Gateway, pool: RecordingPool) -> None:
    body = CompletionRequest.model_validate({"model": "main:support", "prompt": "Once upon", "max_tokens": 4})
    answer = await OpenAIHttpApi(gateway).completions(body, http_request(KEY_ANY, "/v1/completions"))
    assert json.loads(answer.body)["model"] == "main:support" and pool.calls[0].adapter == "support"


async def test_responses_name_the_adapter_as_sent_also_when_read_back(gateway: Gateway, pool: RecordingPool) -> None:
    api = ResponsesHttpApi(gateway)
    body = ResponseCreateRequest.model_validate({"model": "main:support", "input": "hi"})
    created = json.loads((await api.create(body, http_request(KEY_ANY, "/v1/responses"))).body)
    assert created["model"] == "main:support" and pool.calls[0].adapter == "support"
    stored = await api.retrieve(created["id"], http_request(KEY_ANY, f"/v1/responses/{created['id']}"))
    assert json.loads(stored.body)["model"] == "main:support"
    denied = await api.create(body, http_request(KEY_NONE, "/v1/responses"))
    assert denied.status_code == 403 and json.loads(denied.body)["error"]["param"] == "model"
