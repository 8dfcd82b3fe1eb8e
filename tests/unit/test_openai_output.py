"""Domain results -> OpenAI JSON and SSE, checked against the official client's types, and
the route handlers over a stub gateway (errors before and during a stream, a client leaving)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai.types.chat as oai
from starlette.requests import Request

from museserve.api.openai import responses
from museserve.api.openai.http_api import OpenAIHttpApi
from museserve.api.openai.output import DONE, ChunkStream, completion_json
from museserve.api.openai.schemas import ChatCompletionRequest
from museserve.domain import (
    ChatChoice,
    ChatRequest,
    ChatResult,
    ChoiceEnd,
    Finish,
    FinishReason,
    Identity,
    LogprobsDelta,
    Mode,
    ModelInfo,
    PositionLogprobs,
    ReasoningDelta,
    RunningUsage,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallEvent,
    Usage,
)
from museserve.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from museserve.gateway.gateway import Gateway
from museserve.gateway.observer import CountingObserver

USAGE = Usage(prompt_tokens=10, cached_tokens=4, reasoning_tokens=3, output_tokens=5)
POSITION = PositionLogprobs(TokenLogprob("a", 64, -0.5), (TokenLogprob("a", 64, -0.5), TokenLogprob("b", 65, -1e30)))
EVENTS: list[StreamEvent] = [
    ReasoningDelta("let me see"),
    TextDelta("hel"),
    LogprobsDelta((POSITION,)),
    TextDelta("lo"),
    ToolCallEvent(ToolCall("call_1", "get", '{"x": 1}')),
    USAGE,
    Finish(FinishReason.TOOL_CALLS, "muse-tiny"),
]


def parse_sse(lines: list[str]) -> list[dict[str, Any]]:
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    assert lines[-1] == DONE
    return [json.loads(line[len("data: ") :]) for line in lines[:-1]]


def test_completion_matches_the_official_types():
    result = ChatResult("hello", "thought", (ToolCall("c", "f", "{}"),), USAGE, FinishReason.TOOL_CALLS, "muse-tiny",
                        (POSITION,))  # fmt: skip
    data = completion_json(result, "rid", want_logprobs=True)
    parsed = oai.ChatCompletion.model_validate(data)
    responses.ChatCompletion.model_validate(data)
    assert parsed.id == "chatcmpl-rid" and parsed.choices[0].message.content == "hello"
    assert data["choices"][0]["message"]["reasoning_content"] == "thought"
    assert parsed.choices[0].message.tool_calls[0].function.name == "f"
    assert parsed.choices[0].logprobs.content[0].top_logprobs[1].logprob == -9999.0
    u = parsed.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (10, 8, 18)
    assert (u.prompt_tokens_details.cached_tokens, u.completion_tokens_details.reasoning_tokens) == (4, 3)


def test_stream_chunks_match_the_official_types_and_end_with_usage_then_done():
    stream = ChunkStream("rid", "muse-tiny", include_usage=True)
    lines = stream.start() + [line for e in EVENTS for line in stream.event(e)]
    chunks = parse_sse(lines)
    for chunk in chunks:
        oai.ChatCompletionChunk.model_validate(chunk)
        responses.ChatCompletionChunk.model_validate(chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "hello"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me see"
    (call,) = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert call == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get", "arguments": '{"x": 1}'},
    }
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 8


def test_a_degraded_answer_says_so_in_the_body_and_the_finishing_chunk():
    result = ChatResult("hi", "", (), USAGE, FinishReason.STOP, "muse-tiny", (), "thinking_budget=64")
    data = completion_json(result, "rid", want_logprobs=False)
    assert responses.ChatCompletion.model_validate(data).degraded == "thinking_budget=64"
    oai.ChatCompletion.model_validate(data)
    assert "degraded" not in completion_json(ChatResult("hi", "", (), USAGE, FinishReason.STOP, "m"), "rid", False)
    stream = ChunkStream("rid", "muse-tiny", include_usage=False)
    (finishing,) = parse_sse(stream.event(Finish(FinishReason.STOP, "muse-tiny", "mode=instant")))
    assert responses.ChatCompletionChunk.model_validate(finishing).degraded == "mode=instant"
    assert finishing["choices"][0]["finish_reason"] == "stop"


def test_stream_without_include_usage_has_no_usage_chunk():
    stream = ChunkStream("rid", "muse-tiny", include_usage=False)
    chunks = parse_sse(
        [line for e in (TextDelta("x"), USAGE, Finish(FinishReason.STOP, "m")) for line in stream.event(e)]
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]
    assert all("usage" not in c for c in chunks)


def test_n_answers_are_every_choice_of_the_completion():
    first = ChatChoice("one", "", (), FinishReason.STOP, (POSITION,))
    second = ChatChoice("", "", (ToolCall("c", "f", "{}"),), FinishReason.TOOL_CALLS)
    result = ChatResult("one", "", (), USAGE, FinishReason.STOP, "muse-tiny", choices=(first, second))
    data = completion_json(result, "rid", want_logprobs=True)
    parsed = oai.ChatCompletion.model_validate(data)
    responses.ChatCompletion.model_validate(data)
    assert [c.index for c in parsed.choices] == [0, 1]
    assert parsed.choices[0].message.content == "one" and parsed.choices[0].logprobs.content[0].token == "a"
    assert parsed.choices[1].message.tool_calls[0].id == "c" and parsed.choices[1].finish_reason == "tool_calls"


# Two answers, interleaved as the pool sends them; answer 1 ends first.
N2_EVENTS: list[StreamEvent] = [
    TextDelta("a", 0),
    TextDelta("b", 1),
    RunningUsage(Usage(prompt_tokens=10, output_tokens=2)),
    ToolCallEvent(ToolCall("call_1", "get", "{}"), 1),
    ChoiceEnd(1, FinishReason.TOOL_CALLS),
    TextDelta("c", 0),
    LogprobsDelta((POSITION,), 0),
    RunningUsage(Usage(prompt_tokens=10, output_tokens=4)),
    ChoiceEnd(0, FinishReason.LENGTH),
    Usage(prompt_tokens=10, output_tokens=4),
    Finish(FinishReason.LENGTH, "muse-tiny", "thinking_budget=64"),
]


def validated_chunks(lines: list[str]) -> list[dict[str, Any]]:
    chunks = parse_sse(lines)
    for chunk in chunks:
        oai.ChatCompletionChunk.model_validate(chunk)
        responses.ChatCompletionChunk.model_validate(chunk)
    return chunks


def test_n_answers_stream_with_their_index_and_a_finishing_chunk_each():
    stream = ChunkStream("rid", "muse-tiny", include_usage=True, n=2)
    chunks = validated_chunks(stream.start() + [line for e in N2_EVENTS for line in stream.event(e)])
    choices = [(c["choices"][0]["index"], c["choices"][0]) for c in chunks if c["choices"]]
    assert [i for i, c in choices if c["delta"].get("role")] == [0, 1]
    text = {i: "".join(c["delta"].get("content") or "" for j, c in choices if j == i) for i in (0, 1)}
    assert text == {0: "ac", 1: "b"}
    call = next(c["delta"]["tool_calls"][0] for i, c in choices if c["delta"].get("tool_calls"))
    assert call["index"] == 0  # the first call of answer 1
    ends = [(i, c["finish_reason"]) for i, c in choices if c["finish_reason"]]
    assert ends == [(1, "tool_calls"), (0, "length")]
    assert chunks[-2]["degraded"] == "thinking_budget=64"  # the last finishing chunk
    assert [c for c in chunks if "usage" in c] == [chunks[-1]] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["id"] == "chatcmpl-rid" for c in chunks)


def test_continuous_usage_puts_the_running_counts_on_every_chunk():
    stream = ChunkStream("rid", "muse-tiny", include_usage=True, n=2, continuous_usage=True)
    lines = stream.start()
    assert lines == []  # the role chunks wait for the prompt's count
    chunks = validated_chunks(lines + [line for e in N2_EVENTS for line in stream.event(e)])
    counts = [(c["usage"]["prompt_tokens"], c["usage"]["completion_tokens"]) for c in chunks]
    assert counts == [(10, 0), (10, 0), (10, 2), (10, 2)] + [(10, 4)] * (len(chunks) - 4)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[2:4]] == ["a", "b"]
    assert chunks[-1]["choices"] == [] and chunks[-2]["choices"][0]["finish_reason"] == "length"
    without_final = ChunkStream("rid", "m", include_usage=False, continuous_usage=True)
    tail = [line for e in (TextDelta("x"), USAGE, Finish(FinishReason.STOP, "m")) for line in without_final.event(e)]
    assert all(c["choices"] and c["usage"]["total_tokens"] == 18 for c in parse_sse(tail))


class StubGateway:
    """Gateway's surface used by the HTTP API: events, or an error at a chosen point."""

    def __init__(self, events: list[StreamEvent], fail_at: int | None = None, error: Exception | None = None):
        self.events, self.fail_at, self.error = events, fail_at, error
        self.closed = asyncio.Event()
        self.requests: list[ChatRequest] = []
        self.observer = CountingObserver()

    chat = Gateway.chat  # folds `stream`, as the real one does

    def list_models(self, caller: Identity | None = None) -> list[tuple[ModelInfo, bool]]:
        return [(ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT, Mode.THINKING)), True)]

    async def identify(self, credentials) -> Identity:
        if credentials.api_key != "sk-good":
            raise Unauthenticated("the API key is not valid", field="metadata.authorization")
        return Identity("t", credentials.user)

    async def stream(self, request: ChatRequest, on_metadata=None) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        try:
            on_metadata((("x-served-by", "muse-tiny"), ("x-ratelimit-remaining-requests", "7")))
            for i, event in enumerate(self.events):
                if i == self.fail_at:
                    raise self.error
                yield event
                await asyncio.sleep(0)
        finally:
            self.closed.set()


def http_request(key: str = "sk-good", **headers: str) -> Request:
    pairs = [(b"authorization", f"Bearer {key}".encode())] + [(k.encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": pairs})


def body(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "muse-tiny", "messages": [{"role": "user", "content": "hi"}],
                                                 **fields})  # fmt: skip


async def read_stream(response) -> list[str]:
    return [line async for line in response.body_iterator]


async def test_streamed_request_carries_headers_and_user():
    gateway = StubGateway(EVENTS)
    api = OpenAIHttpApi(gateway)  # type: ignore[arg-type]
    response = await api.chat_completions(body(stream=True, user="body-user"), http_request(**{"x-request-id": "r-1"}))
    assert response.status_code == 200 and response.media_type == "text/event-stream"
    assert response.headers["x-ratelimit-remaining-requests"] == "7" and response.headers["x-request-id"] == "r-1"
    chunks = parse_sse(await read_stream(response))
    assert chunks[0]["id"] == "chatcmpl-r-1" and gateway.requests[0].identity.user == "body-user"


async def test_errors_before_the_first_event_are_http_statuses():
    api = OpenAIHttpApi(StubGateway(EVENTS, 0, ResourceExhausted("limit", retry_after_s=1.0)))  # type: ignore[arg-type]
    response = await api.chat_completions(body(stream=True), http_request())
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    unauthenticated = await api.chat_completions(body(stream=True), http_request(key="sk-bad"))
    assert unauthenticated.status_code == 401
    assert json.loads(unauthenticated.body)["error"]["type"] == "authentication_error"


async def test_an_error_mid_stream_is_an_error_event_and_a_fault_hides_its_traceback():
    for error, code in ((InvalidArgument("late"), "invalid_argument"), (RuntimeError("secret detail"), "internal")):
        gateway = StubGateway(EVENTS, 2, error)
        response = await OpenAIHttpApi(gateway).chat_completions(body(stream=True), http_request())  # type: ignore[arg-type]
        lines = await read_stream(response)
        last = json.loads(lines[-1][len("data: ") :])
        assert last["error"]["code"] == code and "secret" not in last["error"]["message"]
        assert gateway.closed.is_set()
        assert gateway.observer.requests == {("http", code.upper()): 1}


async def test_a_client_that_leaves_closes_the_gateway_stream():
    gateway = StubGateway([TextDelta("x")] * 1000 + [USAGE, Finish(FinishReason.STOP, "muse-tiny")])
    response = await OpenAIHttpApi(gateway).chat_completions(body(stream=True), http_request())  # type: ignore[arg-type]
    lines = response.body_iterator
    await anext(lines)
    await anext(lines)
    await lines.aclose()  # what Starlette's cancelled response task leaves to the generator
    assert gateway.closed.is_set()
    assert gateway.observer.requests == {("http", "CANCELLED"): 1}


async def test_unary_models_and_unknown_model():
    gateway = StubGateway(EVENTS)
    api = OpenAIHttpApi(gateway)  # type: ignore[arg-type]
    response = await api.chat_completions(body(), http_request())
    oai.ChatCompletion.model_validate(json.loads(response.body))
    models = json.loads((await api.list_models(http_request())).body)
    assert [m["id"] for m in models["data"]] == ["muse-tiny"]
    responses.ModelList.model_validate(models)
    assert (await api.retrieve_model("nope", http_request())).status_code == 404
    assert (await api.chat_completions(body(model="nope"), http_request())).status_code == 404
    assert gateway.observer.requests == {("http", "OK"): 1, ("http", "NOT_FOUND"): 1}


async def test_a_request_for_n_answers_reaches_the_gateway_and_lists_them():
    gateway = StubGateway(N2_EVENTS)
    api = OpenAIHttpApi(gateway)  # type: ignore[arg-type]
    data = json.loads((await api.chat_completions(body(n=2, min_tokens=1), http_request())).body)
    assert [c.finish_reason for c in oai.ChatCompletion.model_validate(data).choices] == ["length", "tool_calls"]
    assert data["choices"][0]["message"]["content"] == "ac" and gateway.requests[0].sampling.n == 2
    options = {"include_usage": True, "continuous_usage_stats": True}
    streamed = await api.chat_completions(body(n=2, stream=True, stream_options=options), http_request())
    chunks = validated_chunks(await read_stream(streamed))
    assert gateway.requests[1].usage_in_stream and all("usage" in c for c in chunks)


def test_the_openapi_document_describes_the_routes_without_422():
    from museserve.serve.gateway_ingress import http_app

    doc = http_app.openapi()
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert {"200", "400", "401", "404", "429", "503", "504"} <= set(chat["responses"]) and "422" not in json.dumps(doc)
    assert "text/event-stream" in chat["responses"]["200"]["content"] and chat["security"] == [{"bearer": []}]
    assert {"ChatCompletionChunk", "ErrorResponse", "ModelList"} <= set(doc["components"]["schemas"])
    completions = doc["paths"]["/v1/completions"]["post"]
    assert completions["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CompletionRequest")
    assert "text/event-stream" in completions["responses"]["200"]["content"] and "Completion" in json.dumps(completions)
