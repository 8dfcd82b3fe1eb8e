"""The OpenAI-compatible HTTP API, driven by the official `openai` client against the session app."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import jsonschema
import openai
import pytest

from museserve.config import MuseServeConfig

from .conftest import AB_POOL, ADAPTERS, CANDIDATE_POOL, LIMITED_KEY, REAL_POOL, ROUTED_ADAPTER, ROUTED_POOL, TEST_KEY

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0, "seed": 1, "max_tokens": 12}
HELLO = [{"role": "user", "content": "hello there"}]


def _client(config: MuseServeConfig, key: str = TEST_KEY) -> openai.OpenAI:
    base_url = f"http://127.0.0.1:{config.server.http_port}/v1"
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def oai(app_config: MuseServeConfig) -> Iterator[openai.OpenAI]:
    with _client(app_config) as client:
        yield client


def _stream_text(stream) -> tuple[str, str, list]:
    text, reasoning, chunks = [], [], []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices:
            delta = chunk.choices[0].delta
            text.append(delta.content or "")
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
    return "".join(text), "".join(reasoning), chunks


def test_streaming_assembles_the_non_streaming_greedy_text(oai: openai.OpenAI):
    completion = oai.chat.completions.create(model="muse-tiny", messages=HELLO, **GREEDY)
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and completion.model == "muse-tiny"
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.completion_tokens >= 1 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0 and usage.completion_tokens_details.reasoning_tokens == 0

    stream = oai.chat.completions.create(
        model="muse-tiny", messages=HELLO, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    text, _, chunks = _stream_text(stream)
    assert text == choice.message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens


def test_thinking_mode_streams_reasoning_content(oai: openai.OpenAI):
    extra = {"mode": "thinking", "thinking_budget": 8}
    stream = oai.chat.completions.create(
        model="muse-tiny", messages=HELLO, stream=True, stream_options={"include_usage": True}, extra_body=extra,
        **GREEDY,
    )  # fmt: skip
    _, reasoning, chunks = _stream_text(stream)
    assert reasoning and chunks[-1].usage.completion_tokens_details.reasoning_tokens > 0
    completion = oai.chat.completions.create(model="muse-tiny:thinking", messages=HELLO, **GREEDY)
    assert completion.choices[0].message.reasoning_content  # type: ignore[attr-defined]
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0


def test_logprobs(oai: openai.OpenAI):
    completion = oai.chat.completions.create(model="muse-tiny", messages=HELLO, logprobs=True, top_logprobs=2, **GREEDY)
    content = completion.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_models_list_the_pools(oai: openai.OpenAI):
    # After the models, with their parent: the real pool's adapters, then the routed pool's.
    adapters = [f"{REAL_POOL}:{name}" for name in sorted(ADAPTERS)] + [f"{ROUTED_POOL}:{ROUTED_ADAPTER}"]
    assert [m.id for m in oai.models.list()] == [
        "muse-tiny",
        REAL_POOL,
        AB_POOL,
        CANDIDATE_POOL,
        ROUTED_POOL,
        *adapters,
    ]
    assert oai.models.retrieve("muse-tiny").id == "muse-tiny"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


def test_a_bad_key_is_401(app_config: MuseServeConfig):
    with _client(app_config, "sk-wrong") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="muse-tiny", messages=HELLO)
    assert caught.value.body["type"] == "authentication_error"


def test_a_rate_limit_is_429_with_retry_after(app_config: MuseServeConfig):
    with _client(app_config, LIMITED_KEY) as client:
        for _ in range(2):
            client.chat.completions.create(model="muse-tiny", messages=HELLO, max_tokens=1)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="muse-tiny", messages=HELLO, max_tokens=1, stream=True)
    headers = caught.value.response.headers
    assert int(headers["retry-after"]) >= 1 and headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.body["code"] == "resource_exhausted"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 7}, "temperature"),
        ({"n": 200}, "n"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"extra_body": {"thinking_budget": 4}}, "thinking_budget"),
        ({"stop": ["x"] * 20}, "stop"),
    ],
)
def test_an_invalid_field_is_400_with_param(oai: openai.OpenAI, fields: dict, param: str):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="muse-tiny", messages=HELLO, **fields)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"


def test_an_unknown_model_is_404(oai: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert caught.value.body["param"] == "model"


def test_a_corrupt_image_is_400(oai: openai.OpenAI):
    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="muse-tiny", messages=[{"role": "user", "content": content}])
    assert caught.value.body["param"] == "messages[0].content[1].image_url.url"


# Bounded values: random weights would otherwise write a string until the token limit.
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}


def test_tool_choice_required_returns_tool_calls(oai: openai.OpenAI):
    fields = {"tools": [WEATHER_TOOL], "tool_choice": "required", "temperature": 1.0, "seed": 3, "max_tokens": 300}
    completion = oai.chat.completions.create(model="muse-tiny", messages=HELLO, **fields)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    chunks = list(oai.chat.completions.create(model="muse-tiny", messages=HELLO, stream=True, **fields))
    streamed = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert [(c.index, c.function.name, c.function.arguments) for c in streamed] == [
        (i, c.function.name, c.function.arguments) for i, c in enumerate(choice.message.tool_calls)
    ]  # the same seed: the same calls (ids are fresh per request)
    assert all(c.id.startswith("call_") and c.type == "function" for c in streamed)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    followup = [
        *HELLO,
        choice.message,
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    assert oai.chat.completions.create(model="muse-tiny", messages=followup, max_tokens=2).choices[0].message


def test_json_schema_response_format(oai: openai.OpenAI):
    response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
    completion = oai.chat.completions.create(
        model="muse-tiny", messages=HELLO, response_format=response_format, temperature=1.0, seed=5, max_tokens=300
    )
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), WEATHER)


def test_malformed_json_and_unknown_routes_answer_in_openai_shape(app_config: MuseServeConfig):
    base = f"http://127.0.0.1:{app_config.server.http_port}"
    for path, data, status in (("/v1/chat/completions", b"{not json", 400), ("/v1/nothing", b"{}", 404)):
        request = urllib.request.Request(
            base + path, data=data, headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == status and set(json.load(caught.value)["error"]) == {
            "message",
            "type",
            "param",
            "code",
        }
    with urllib.request.urlopen(f"{base}/openapi.json", timeout=10) as r:
        doc = json.load(r)
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model_id}"} <= set(doc["paths"])


@pytest.mark.parametrize("attempt", range(3))
def test_a_client_that_disconnects_stops_generation(oai: openai.OpenAI, pool_handle, attempt: int):
    request_id = f"openai-cancel-{uuid.uuid4().hex}"
    stream = oai.chat.completions.create(
        model="muse-tiny", messages=HELLO, stream=True, temperature=1.0, seed=1, max_tokens=1000,
        extra_headers={"x-request-id": request_id},
    )  # fmt: skip
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    stream.close()
    deadline = time.monotonic() + 15
    while True:
        record = pool_handle.stats.remote().result(timeout_s=10)["recent"].get(request_id)
        if record is not None and record["phase"] not in ("running", "waiting"):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the generation did not end within 15 s of the disconnect: {record}")
        time.sleep(0.05)
    assert record["phase"] == "cancelled" and record["generated_tokens"] < 1000


def test_a_body_over_the_size_limit_is_413_before_parsing(app_config: MuseServeConfig):
    url = f"http://127.0.0.1:{app_config.server.http_port}/v1/chat/completions"
    text = "x" * (app_config.server.max_request_bytes + 1)
    body = json.dumps({"model": "muse-tiny", "messages": [{"role": "user", "content": text}]}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json", "authorization": f"Bearer {TEST_KEY}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413
    assert json.load(refused.value)["error"]["code"] == "request_too_large"
