"""The whole request path on a real local Ray cluster, through the real gRPC proxy."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from museserve.client import ChatClient, build_request
from museserve.lora.registry import AdapterRegistry
from museserve.v1 import chat_pb2 as pb

from .conftest import TEST_KEY

pytestmark = pytest.mark.integration


def _greedy(text: str = "hello", **kwargs) -> pb.ChatRequest:
    request = build_request(text, temperature=0.0, **kwargs)
    return request


def test_unary_chat_returns_text_and_consistent_usage(client: ChatClient):
    response = client.chat(_greedy(max_output_tokens=16), timeout=30)
    assert response.model == "muse-tiny"
    assert response.request_id
    assert response.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    u = response.usage
    assert 1 <= u.output_tokens <= 16 and u.reasoning_tokens == 0
    assert u.total_tokens == u.prompt_tokens + u.reasoning_tokens + u.output_tokens
    if response.finish_reason == pb.FINISH_REASON_LENGTH:
        assert u.output_tokens == 16


def test_stream_equals_unary_for_the_same_greedy_request(client: ChatClient):
    unary = client.chat(_greedy(max_output_tokens=24), timeout=30)
    events = list(client.stream(_greedy(max_output_tokens=24), timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-2:] == ["usage", "finish"], kinds
    assert set(kinds[:-2]) <= {"text_delta"}
    assert "".join(e.text_delta for e in events[:-2]) == unary.text
    assert events[-2].usage == unary.usage
    assert events[-1].finish.reason == unary.finish_reason
    assert events[-1].finish.request_id


def test_seeded_sampling_is_reproducible(client: ChatClient):
    def run(seed: int) -> str:
        return client.chat(build_request("tell me", temperature=1.0, seed=seed, max_output_tokens=20), timeout=30).text

    assert run(7) == run(7)


def test_thinking_streams_reasoning_before_the_answer_within_budget(client: ChatClient):
    request = build_request("think first", mode="thinking", thinking_budget=6, max_output_tokens=8, temperature=0.0)
    events = list(client.stream(request, timeout=30))
    kinds = [e.WhichOneof("event") for e in events]
    assert "reasoning_delta" in kinds
    if "text_delta" in kinds:
        assert max(i for i, k in enumerate(kinds) if k == "reasoning_delta") < kinds.index("text_delta")
    usage = events[-2].usage
    assert 1 <= usage.reasoning_tokens <= 6 + 1  # the budget plus the closing marker


def test_count_tokens_matches_the_prompt_usage(client: ChatClient):
    request = _greedy("count these few words", max_output_tokens=4)
    count = client.count_tokens(request, timeout=30)
    assert count.model == "muse-tiny" and count.context_length == 2048
    assert count.prompt_tokens == client.chat(request, timeout=30).usage.prompt_tokens


def test_list_models(client: ChatClient):
    models = client.list_models(timeout=10).models
    assert [m.name for m in models] == ["muse-tiny", "smollm2-135m", "muse-ab", "muse-cand", "muse-routed"]
    assert models[0].is_default and list(models[0].modes) == [pb.MODE_INSTANT, pb.MODE_THINKING, pb.MODE_CONTEMPLATING]


def test_reflection_lists_the_services(grpc_address: str):
    with grpc.insecure_channel(grpc_address) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "museserve.v1.ChatService" in services
    assert "grpc.health.v1.Health" in services


def test_standard_health_check_answers_serving_without_metadata(grpc_address: str):
    with grpc.insecure_channel(grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_http_health_and_models(app_config):
    base = f"http://127.0.0.1:{app_config.server.http_port}"
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
        assert json.load(r) == {"status": "ok"}
    models = urllib.request.Request(f"{base}/v1/models", headers={"Authorization": f"Bearer {TEST_KEY}"})
    with urllib.request.urlopen(models, timeout=10) as r:
        listed = [m["id"] for m in json.load(r)["data"]]
    adapters = [f"{pool.name}:{name}" for pool in app_config.pools for name in AdapterRegistry(pool.lora).names()]
    assert listed == [p.name for p in app_config.pools] + adapters  # the models, then the adapters of each


def test_request_id_from_the_client_is_kept(client: ChatClient):
    request = _greedy(max_output_tokens=2)
    request.request_id = "client-chosen-id-1"
    response, call = client.stub.Chat.with_call(request, timeout=30, metadata=client.metadata)
    assert response.request_id == "client-chosen-id-1"
    assert ("x-request-id", "client-chosen-id-1") in tuple(call.trailing_metadata())


@pytest.mark.parametrize("unusable", ["0\n", "a b", "x" * 129, "é"])
def test_a_request_id_that_cannot_be_a_header_is_replaced(client: ChatClient, unusable: str):
    """Python's `$` also matches before a final newline: "0\n" once passed and broke the trailers."""
    request = _greedy(max_output_tokens=1)
    request.request_id = unusable
    response, call = client.stub.Chat.with_call(request, timeout=30, metadata=client.metadata)
    assert response.request_id != unusable and len(response.request_id) == 32
    assert ("x-request-id", response.request_id) in tuple(call.trailing_metadata())


def test_logprobs_over_grpc(client: ChatClient):
    request = _greedy(max_output_tokens=5)
    request.sampling.logprobs = True
    request.sampling.top_logprobs = 2
    response = client.chat(request, timeout=30)
    assert 1 <= len(response.logprobs) <= response.usage.output_tokens
    for position in response.logprobs:
        assert position.chosen.logprob <= 0.0
        assert len(position.top) == 2
    events = list(client.stream(request, timeout=30))
    streamed = [p for e in events if e.WhichOneof("event") == "logprobs" for p in e.logprobs.positions]
    assert [p.chosen.token_id for p in streamed] == [p.chosen.token_id for p in response.logprobs]
