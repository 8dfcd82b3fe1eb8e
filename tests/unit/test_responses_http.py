"""The Responses API routes over a real `Gateway` (text preprocessing in process, a scripted
pool, stored answers in memory), driven by the official client through an ASGI transport with
strict response validation: create, stream, retrieve, delete, input items, follow-ups by
previous_response_id, tenants, and errors before and after a stream starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import httpx2 as httpx  # the HTTP client the openai package ships with
import openai
import pytest
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from museserve.api.openai.http_api import install_error_handlers
from museserve.api.openai.responses_http import ResponsesHttpApi
from museserve.api.openai.responses_schemas import ResponseCreateRequest
from museserve.config import MuseServeConfig, parse_config
from museserve.domain import FinishReason, ToolCall, Usage
from museserve.errors import Unavailable
from museserve.gateway.gateway import Gateway
from museserve.gateway.identity import key_digest
from museserve.messages import GenerationChunk, PreparedRequest
from tests.support import text_preprocess

KEY_A, KEY_B = "sk-tenant-a", "sk-tenant-b"
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def make_config() -> MuseServeConfig:
    keys = [{"sha256": key_digest(k), "tenant": t} for k, t in ((KEY_A, "a"), (KEY_B, "b"))]
    return parse_config({"pools": [{"name": "main"}], "gateway": {"auth": "api_key", "api_keys": keys}})


class ScriptedPool:
    """Streams `script` (reasoning, text or a tool call per chunk), then finishes; may fail
    after `fail_after` chunks. Keeps every prepared request it was sent."""

    def __init__(self) -> None:
        self.script: list[str | ToolCall] = ["hel", "lo"]
        self.reasoning = ""
        self.finish = FinishReason.STOP
        self.fail_after: int | None = None
        self.calls: list[PreparedRequest] = []
        self.closed = 0

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.calls.append(request)
        try:
            if self.reasoning:
                yield GenerationChunk(reasoning=self.reasoning, num_new_tokens=1)
            for i, step in enumerate(self.script):
                if i == self.fail_after:
                    raise Unavailable("replica died")
                await asyncio.sleep(0)
                if isinstance(step, ToolCall):
                    yield GenerationChunk(tool_calls=(step,), num_new_tokens=3)
                else:
                    yield GenerationChunk(text=step, num_new_tokens=1)
            usage = Usage(request.num_prompt_tokens, 0, int(bool(self.reasoning)), len(self.script))
            yield GenerationChunk(finish=self.finish, usage=usage)
        finally:
            self.closed += 1


def build_app(api: ResponsesHttpApi) -> FastAPI:
    """The routes as the gateway ingress registers them."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/responses")
    async def create(body: ResponseCreateRequest, request: Request) -> Response:
        return await api.create(body, request)

    @app.get("/v1/responses/{response_id}")
    async def retrieve(response_id: str, request: Request, stream: bool | None = None) -> Response:
        return await api.retrieve(response_id, request, stream)

    @app.delete("/v1/responses/{response_id}")
    async def delete(response_id: str, request: Request) -> Response:
        return await api.delete(response_id, request)

    @app.get("/v1/responses/{response_id}/input_items")
    async def items(
        response_id: str,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Literal["asc", "desc"] = "desc",
    ) -> Response:
        return await api.list_input_items(response_id, request, after, limit, order)

    return app


@pytest.fixture
def pool() -> ScriptedPool:
    return ScriptedPool()


@pytest.fixture
def api(pool: ScriptedPool) -> ResponsesHttpApi:
    config = make_config()
    return ResponsesHttpApi(Gateway(config, text_preprocess(config), {"main": pool}))


def client_for(api: ResponsesHttpApi, key: str = KEY_A) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=build_app(api))
    http = httpx.AsyncClient(transport=transport, base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=key, http_client=http, max_retries=0,
                              _strict_response_validation=True)  # fmt: skip


@pytest.fixture
def oai(api: ResponsesHttpApi) -> openai.AsyncOpenAI:
    return client_for(api)


async def test_create_stores_and_retrieve_shows_the_same_response(oai: openai.AsyncOpenAI, api: ResponsesHttpApi):
    raw = await oai.responses.with_raw_response.create(model="main", input="hi", metadata={"k": "v"},
                                                      instructions="be brief", max_output_tokens=5)  # fmt: skip
    created = raw.parse()
    assert created.id.startswith("resp_") and raw.headers["x-museserve-response-id"] == created.id
    assert created.status == "completed" and created.output_text == "hello" and created.model == "main"
    assert created.usage.input_tokens > 0 and created.usage.output_tokens == 2
    retrieved = await oai.responses.retrieve(created.id)
    assert retrieved.model_dump() == created.model_dump()
    assert retrieved.metadata == {"k": "v"} and retrieved.instructions == "be brief"


async def test_store_false_keeps_nothing(oai: openai.AsyncOpenAI):
    created = await oai.responses.create(model="main", input="hi", store=False)
    assert created.id.startswith("resp_") and created.store is False
    with pytest.raises(openai.NotFoundError):
        await oai.responses.retrieve(created.id)


async def test_a_follow_up_continues_the_stored_conversation(oai: openai.AsyncOpenAI, pool: ScriptedPool):
    first = await oai.responses.create(input="hi", instructions="be brief")
    follow = await oai.responses.create(input="and then?", previous_response_id=first.id)
    assert follow.previous_response_id == first.id and follow.instructions is None
    first_prompt, follow_prompt = pool.calls[0].prompt_token_ids, pool.calls[1].prompt_token_ids
    # Instructions apply to their own turn: without them the follow-up's prompt starts differently.
    assert follow_prompt[:3] != first_prompt[:3]
    again = await oai.responses.create(input="more", previous_response_id=follow.id)
    # The history renders as it was prompted: the earlier prompt is a prefix of the next, up to
    # its generation prompt (`<|assistant|><|think|><|/think|>`: the answer follows `<|assistant|>`).
    earlier, later = pool.calls[1].prompt_token_ids, pool.calls[2].prompt_token_ids
    assert later[: len(earlier) - 2] == earlier[:-2] and later[len(earlier) - 2] != earlier[-2]
    items = await oai.responses.input_items.list(again.id, order="asc")
    assert [item.content[0].text for item in items.data] == ["more"]  # this turn's own input


async def test_a_function_call_and_its_output_by_previous_response_id(oai: openai.AsyncOpenAI, pool: ScriptedPool):
    pool.script, pool.finish = [CALL], FinishReason.TOOL_CALLS
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    first = await oai.responses.create(input="weather in Paris?", tools=tools, tool_choice="required")
    call = first.output[0]
    assert (call.type, call.call_id, call.name, call.arguments) == ("function_call", "call_1", "get_weather",
                                                                     CALL.arguments_json)  # fmt: skip
    pool.script, pool.finish = ["sunny"], FinishReason.STOP
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "22 C and sunny"}
    follow = await oai.responses.create(input=[output], previous_response_id=first.id, tools=tools)
    assert follow.output_text == "sunny"
    items = await oai.responses.input_items.list(follow.id)
    assert [(i.type, i.call_id, i.output) for i in items.data] == [("function_call_output", "call_1", "22 C and sunny")]


async def test_the_official_stream_helper_gets_the_final_response(oai: openai.AsyncOpenAI, pool: ScriptedPool):
    pool.reasoning = "thinking it over"
    async with oai.responses.stream(model="main:thinking", input="hi") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert final.output_text == "hello" and final.output[0].type == "reasoning"
    retrieved = await oai.responses.retrieve(final.id)  # the helper's is a ParsedResponse: compare the fields
    assert [item.model_dump() for item in retrieved.output] == [
        oai_item.model_dump(exclude={"content": {"__all__": {"parsed"}}}) if oai_item.type == "message"
        else oai_item.model_dump() for oai_item in final.output
    ]  # fmt: skip
    assert (retrieved.id, retrieved.usage, retrieved.status) == (final.id, final.usage, final.status)


async def test_another_tenant_sees_nothing_and_delete_then_retrieve_is_404(oai: openai.AsyncOpenAI, api):
    created = await oai.responses.create(input="secret")
    other = client_for(api, KEY_B)
    for call in (
        lambda: other.responses.retrieve(created.id),
        lambda: other.responses.delete(created.id),
        lambda: other.responses.input_items.list(created.id),
        lambda: other.responses.create(input="x", previous_response_id=created.id),
    ):
        with pytest.raises(openai.NotFoundError):
            await call()
    await oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.responses.retrieve(created.id)
    assert caught.value.body["param"] == "response_id"


async def test_errors_before_the_stream_are_http_statuses_with_params(oai: openai.AsyncOpenAI, api):
    cases: list[tuple[dict[str, Any], type[openai.APIStatusError], str | None]] = [
        ({"model": "nope"}, openai.NotFoundError, "model"),
        ({"temperature": 9}, openai.BadRequestError, "temperature"),
        ({"tools": [{"type": "web_search"}]}, openai.BadRequestError, "tools[0].type"),
        ({"max_output_tokens": 10**6}, openai.BadRequestError, "max_output_tokens"),
        ({"previous_response_id": "resp_" + "f" * 32}, openai.NotFoundError, "previous_response_id"),
        ({"previous_response_id": "nope"}, openai.BadRequestError, "previous_response_id"),
    ]
    for fields, error, param in cases:
        with pytest.raises(error) as caught:
            await oai.responses.create(input="hi", stream=True, **fields)
        assert caught.value.body["param"] == param, fields
    with pytest.raises(openai.AuthenticationError):
        await client_for(api, "sk-wrong").responses.create(input="hi")


async def test_an_error_mid_stream_ends_it_with_response_failed(oai: openai.AsyncOpenAI, pool: ScriptedPool, api):
    pool.script, pool.fail_after = ["a", "b", "c"], 1
    stream = await oai.responses.create(input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    assert events[-1].response.error.code == "server_error" and events[-1].response.output[0].content[0].text == "a"
    assert pool.closed == 1


async def test_input_items_page_by_after(oai: openai.AsyncOpenAI):
    items = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    created = await oai.responses.create(input=items)
    first = await oai.responses.input_items.list(created.id, limit=2, order="asc")
    assert [i.content[0].text for i in first.data] == ["m0", "m1"] and first.has_more
    rest = await oai.responses.input_items.list(created.id, limit=10, order="asc", after=first.last_id)
    assert [i.content[0].text for i in rest.data] == ["m2", "m3", "m4"] and not rest.has_more
    newest = await oai.responses.input_items.list(created.id, limit=1)
    assert newest.data[0].content[0].text == "m4"  # desc by default, as OpenAI


async def test_a_client_that_leaves_closes_the_pool_stream(api: ResponsesHttpApi, pool):
    pool.script = ["x"] * 1000
    body = ResponseCreateRequest.model_validate({"input": "hi", "stream": True})
    request = Request({"type": "http", "method": "POST", "path": "/v1/responses",
                       "headers": [(b"authorization", f"Bearer {KEY_A}".encode())]})  # fmt: skip
    response = await api.create(body, request)
    lines = response.body_iterator
    await anext(lines)
    await anext(lines)
    await lines.aclose()  # what Starlette's cancelled response task leaves to the generator
    for _ in range(100):  # the gateway's stream is closed; the pool's own ends as the loop finalises it
        if pool.closed:
            break
        await asyncio.sleep(0.01)
    assert pool.closed == 1
    assert api.gateway.observer.requests == {("http", "CANCELLED"): 1}
