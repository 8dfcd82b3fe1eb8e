"""`x-request-id` appears once on every HTTP response behind Ray Serve's proxy.

The proxy wraps every app in its `RequestIdMiddleware`, which sets the request's id when the
client sent none and appends it to every response. Here the gateway's app class
(`ServeIngressApp`) with the OpenAI routes over a stub gateway sits inside that same
middleware, as it does in the proxy, and the raw headers are counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2 as httpx  # the HTTP client the openai package ships with
import pytest
from fastapi import FastAPI, Request
from ray.serve._private.http_util import RequestIdMiddleware
from starlette.types import ASGIApp

from museserve.api.openai.http_api import OpenAIHttpApi, install_error_handlers
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.domain import ChatRequest, Finish, FinishReason, Identity, Mode, ModelInfo, StreamEvent, TextDelta, Usage
from museserve.errors import Unauthenticated
from museserve.gateway.gateway import Gateway
from museserve.gateway.observer import CountingObserver
from museserve.serve.request_id_header import ServeIngressApp

KEY = {"authorization": "Bearer sk-good"}
HELLO = {"model": "muse-tiny", "messages": [{"role": "user", "content": "hi"}]}


class StubGateway:
    """What the OpenAI routes call on a Gateway: one short answer, one key."""

    observer = CountingObserver()
    chat = Gateway.chat  # folds `stream`, as the real one does

    def list_models(self, caller: Identity | None = None) -> list[tuple[ModelInfo, bool]]:
        return [(ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT,)), True)]

    async def identify(self, credentials) -> Identity:
        if credentials.api_key != "sk-good":
            raise Unauthenticated("the API key is not valid", field="metadata.authorization")
        return Identity("t", credentials.user)

    async def stream(self, request: ChatRequest, on_metadata=None) -> AsyncIterator[StreamEvent]:
        on_metadata((("x-served-by", "muse-tiny"),))
        for event in (TextDelta("hello"), Usage(3, 0, 0, 1), Finish(FinishReason.STOP, "muse-tiny")):
            yield event


def behind_proxy(app: FastAPI) -> ASGIApp:
    """`app` with the OpenAI routes, as Ray Serve's HTTP proxy forwards to it."""
    install_error_handlers(app)
    api = OpenAIHttpApi(StubGateway())  # type: ignore[arg-type]

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await api.chat_completions(body, request)

    @app.get("/v1/models")
    async def list_models(request: Request):
        return await api.list_models(request)

    @app.get("/fault")
    async def fault():
        raise RuntimeError("a bug")  # answered by the fault handler, outside user middleware

    return RequestIdMiddleware(app)


def client(app: ASGIApp) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def test_the_api_alone_behind_the_proxy_would_send_it_twice():
    """Why the gateway's app drops its own copy: the proxy always appends one."""
    async with client(behind_proxy(FastAPI())) as http:
        response = await http.post("/v1/chat/completions", json=HELLO, headers=KEY)
    assert response.status_code == 200 and len(response.headers.get_list("x-request-id")) == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/v1/chat/completions", HELLO, KEY, 200),
        ("POST", "/v1/chat/completions", HELLO | {"stream": True}, KEY, 200),
        ("POST", "/v1/chat/completions", HELLO, {"authorization": "Bearer sk-bad"}, 401),
        ("POST", "/v1/chat/completions", HELLO | {"model": "nope"}, KEY, 404),
        ("POST", "/v1/chat/completions", {"model": "muse-tiny"}, KEY, 400),
        ("POST", "/v1/chat/completions", HELLO | {"stream": True, "model": "nope"}, KEY, 404),
        ("GET", "/v1/models", None, KEY, 200),
        ("GET", "/no-such-route", None, {}, 404),
        ("GET", "/fault", None, {}, 500),
    ],
)
async def test_every_response_carries_the_request_id_once(method, path, body, headers, status):
    async with client(behind_proxy(ServeIngressApp())) as http:
        response = await http.request(method, path, json=body, headers=headers)
    assert response.status_code == status
    assert len(response.headers.get_list("x-request-id")) == 1


async def test_the_header_and_the_body_name_the_same_request():
    async with client(behind_proxy(ServeIngressApp())) as http:
        chosen = await http.post("/v1/chat/completions", json=HELLO, headers=KEY | {"x-request-id": "client-id-1"})
        generated = await http.post("/v1/chat/completions", json=HELLO, headers=KEY)
        streamed = await http.post("/v1/chat/completions", json=HELLO | {"stream": True}, headers=KEY)
    assert chosen.headers.get_list("x-request-id") == ["client-id-1"] and chosen.json()["id"] == "chatcmpl-client-id-1"
    (request_id,) = generated.headers.get_list("x-request-id")
    assert generated.json()["id"] == f"chatcmpl-{request_id}"
    (request_id,) = streamed.headers.get_list("x-request-id")
    assert f'"id":"chatcmpl-{request_id}"' in streamed.text.replace(" ", "")
