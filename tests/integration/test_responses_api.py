"""The Responses API (`/v1/responses`) and conversation state over gRPC, against the session app.

The session app runs one gateway replica with its stored answers in the session's Redis. A
follow-up served by another gateway replica is shown with a second `Gateway` built in this
process by `build_gateway` from the same config: it shares nothing with the app's gateway but
Redis and the Serve deployments it calls through its own handles, as another replica would.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator

import grpc
import httpx2 as httpx  # the HTTP client the openai package ships with
import jsonschema
import openai
import pytest
from ray import serve

from museserve.api.openai.responses_http import ResponsesHttpApi
from museserve.config import MuseServeConfig
from museserve.gateway.factory import build_gateway
from museserve.gateway.observer import CountingObserver
from museserve.serve.app import PREPROCESS_DEPLOYMENT, pool_deployment_name
from museserve.serve.handles import HandlePoolClient, HandlePreprocessClient
from museserve.v1 import chat_pb2 as pb
from tests.unit.test_responses_http import build_app

from .conftest import PROBE_KEY, ROUTED_POOL, ROUTING_PERIOD_S, TEST_KEY, key_client

pytestmark = pytest.mark.integration

# Bounded values: random weights would otherwise write a string until the token limit.
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": WEATHER}
SHORT = {"model": "muse-tiny", "max_output_tokens": 6, "temperature": 0}
# A router that starts after the replicas rebuilds its view from their next snapshot
# (routing.snapshot_every publications, 10 by default), then trails them by VIEW_S.
VIEW_S = 4 * ROUTING_PERIOD_S + 1.0
SNAPSHOT_S = 10 * ROUTING_PERIOD_S + VIEW_S
WORDS = "river stone light model token cache graph cloud music paper engine signal garden window orbit".split()


def _client(config: MuseServeConfig, key: str = TEST_KEY) -> openai.OpenAI:
    base_url = f"http://127.0.0.1:{config.server.http_port}/v1"
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def oai(app_config: MuseServeConfig) -> Iterator[openai.OpenAI]:
    with _client(app_config) as client:
        yield client


def test_create_returns_a_stored_response_that_retrieve_shows(oai: openai.OpenAI):
    created = oai.responses.create(input="hello there", **SHORT)
    assert created.object == "response" and created.status in ("completed", "incomplete")
    assert created.model == "muse-tiny" and created.output[0].type == "message" and created.store
    assert created.usage.input_tokens > 0 and 1 <= created.usage.output_tokens <= 6
    retrieved = oai.responses.retrieve(created.id)
    assert retrieved.output_text == created.output_text and retrieved.usage == created.usage


def test_the_stream_helper_assembles_the_final_response(oai: openai.OpenAI):
    # The helper's final response is a completed one (response.incomplete, a cut answer, has
    # none): a JSON schema ends the answer well within its budget.
    fmt = {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}
    with oai.responses.stream(input="hello there", text={"format": fmt}, model="muse-tiny", max_output_tokens=300,
                              temperature=0) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
    jsonschema.validate(json.loads(final.output_text), WEATHER)
    assert oai.responses.retrieve(final.id).output_text == final.output_text
    with oai.responses.stream(input="hello there", **SHORT) as stream:
        assert [event.type for event in stream][-1] == "response.incomplete"  # cut at max_output_tokens


def test_a_function_call_then_its_output_by_previous_response_id(oai: openai.OpenAI):
    first = oai.responses.create(input="weather?", tools=[WEATHER_TOOL], tool_choice="required", model="muse-tiny",
                                 max_output_tokens=300, temperature=0)  # fmt: skip
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and first.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "22 C, sunny"} for c in calls]
    follow = oai.responses.create(input=outputs, previous_response_id=first.id, tools=[WEATHER_TOOL], **SHORT)
    assert follow.previous_response_id == first.id and follow.output
    items = oai.responses.input_items.list(follow.id, order="asc")
    assert [(i.type, i.call_id) for i in items.data] == [("function_call_output", c.call_id) for c in calls]


def test_a_json_schema_text_format_parses(oai: openai.OpenAI):
    fmt = {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}
    response = oai.responses.create(input="weather?", text={"format": fmt}, model="muse-tiny", max_output_tokens=300,
                                    temperature=0)  # fmt: skip
    assert response.status == "completed" and response.text.format.name == "weather"
    jsonschema.validate(json.loads(response.output_text), WEATHER)


def test_another_tenants_id_is_404_and_delete_then_retrieve_is_404(app_config: MuseServeConfig, oai: openai.OpenAI):
    created = oai.responses.create(input="a secret", **SHORT)
    with _client(app_config, PROBE_KEY) as other:
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError) as caught:
            other.responses.create(input="go on", previous_response_id=created.id, **SHORT)
        assert caught.value.body["param"] == "previous_response_id"
    oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)


def test_refused_fields_are_400_with_param(oai: openai.OpenAI):
    for fields, param in (({"background": True}, "background"), ({"tools": [{"type": "web_search"}]}, "tools[0].type")):
        with pytest.raises(openai.BadRequestError) as caught:
            oai.responses.create(input="hi", **SHORT, **fields)
        assert caught.value.body["param"] == param


def test_grpc_store_then_follow_up_by_previous_response_id(grpc_address: str):
    client = key_client(grpc_address, TEST_KEY)
    try:
        user = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="remember the word river")])
        sampling = pb.SamplingParams(max_output_tokens=4, temperature=0.0)
        first = client.chat(pb.ChatRequest(messages=[user], sampling=sampling, store=True), timeout=60)
        assert first.response_id.startswith("resp_")
        again = pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="which word?")])
        follow = pb.ChatRequest(messages=[again], sampling=sampling, previous_response_id=first.response_id, store=True)
        events = list(client.stream(follow, timeout=60))
        finish = events[-1].finish
        assert finish.response_id.startswith("resp_") and finish.response_id != first.response_id
        assert events[-2].usage.prompt_tokens > first.usage.prompt_tokens  # the history came first
        other = key_client(grpc_address, PROBE_KEY, user="probe")  # refused before any quota is charged
        with pytest.raises(grpc.RpcError) as caught:
            other.chat(pb.ChatRequest(messages=[again], sampling=sampling, previous_response_id=first.response_id))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        other.close()
    finally:
        client.close()


def second_gateway(config: MuseServeConfig) -> openai.AsyncOpenAI:
    """Another gateway replica in this process, over the app's deployments and Redis."""
    app = config.app_name
    pools = {
        p.name: HandlePoolClient(serve.get_deployment_handle(pool_deployment_name(p), app_name=app), p.name)
        for p in config.pools
    }
    handle = serve.get_deployment_handle(PREPROCESS_DEPLOYMENT, app_name=app)
    gateway = build_gateway(config, HandlePreprocessClient(handle, config.preprocess.call_timeout_s), pools,
                            CountingObserver())  # fmt: skip
    transport = httpx.ASGITransport(app=build_app(ResponsesHttpApi(gateway)))
    http = httpx.AsyncClient(transport=transport, base_url="http://second-gateway", timeout=60)
    return openai.AsyncOpenAI(base_url="http://second-gateway/v1", api_key=TEST_KEY, http_client=http, max_retries=0)


async def test_a_follow_up_on_another_gateway_replica_lands_where_its_history_is_cached(
    app_config: MuseServeConfig, oai: openai.OpenAI
):
    other = second_gateway(app_config)
    # Its router follows the replicas from their next snapshot on: started now, before turn one.
    await other.responses.create(input="warm up", model=ROUTED_POOL, max_output_tokens=1, store=False)
    started = time.monotonic()
    firsts = []
    for index in range(2):  # two conversations, each with a system prompt of its own
        rng = random.Random(1000 + index)
        system = f"conversation {index}: " + " ".join(rng.choice(WORDS) for _ in range(160))
        items = [{"role": "system", "content": system}, {"role": "user", "content": "what is the first thing?"}]
        firsts.append(oai.responses.create(input=items, model=ROUTED_POOL, max_output_tokens=6, temperature=0))
    await asyncio.sleep(max(VIEW_S, SNAPSHOT_S - (time.monotonic() - started)))
    for first in firsts:
        follow = await other.responses.create(input="and the second?", previous_response_id=first.id,
                                              model=ROUTED_POOL, max_output_tokens=6, temperature=0)  # fmt: skip
        assert follow.previous_response_id == first.id
        # The history came from Redis, and the router sent it where turn one's prompt is cached:
        # all of it but the last partial block and the generation prompt's markers.
        share = follow.usage.input_tokens_details.cached_tokens / first.usage.input_tokens
        assert share >= 0.8, (share, follow.usage, first.usage)
        assert follow.usage.input_tokens > first.usage.input_tokens
