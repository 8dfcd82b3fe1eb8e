"""The gateway replica's own gRPC server (`server.direct_grpc_port`): the same API as the
proxy path, stream errors with rich details, health, and cancels that always reach the pool."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from museserve.client import ChatClient, build_request
from museserve.v1 import chat_pb2 as pb

from .conftest import DIRECT_LIMITED_KEY, MAX_REQUEST_BYTES, TEST_KEY, key_client

pytestmark = pytest.mark.integration

LONG_OUTPUT = 1000  # far more tokens than the tiny model makes before the client leaves


@pytest.fixture
def direct(direct_grpc_address: str) -> Iterator[ChatClient]:
    c = key_client(direct_grpc_address, TEST_KEY)
    yield c
    c.close()


def _greedy(text: str = "tell me about the sea") -> pb.ChatRequest:
    return build_request(text, temperature=0.0, max_output_tokens=24)


def _streamed_text(events) -> tuple[str, pb.Usage, str]:
    text, usage, model = [], pb.Usage(), ""
    for event in events:
        kind = event.WhichOneof("event")
        if kind == "text_delta":
            text.append(event.text_delta)
        elif kind == "usage":
            usage = event.usage
        elif kind == "finish":
            model = event.finish.model
    return "".join(text), usage, model


def test_unary_and_stream_equal_the_proxy_path(client: ChatClient, direct: ChatClient):
    via_proxy = client.chat(_greedy(), timeout=60)
    reply, call = direct.stub.Chat.with_call(_greedy(), metadata=direct.metadata, timeout=60)
    assert (reply.text, reply.usage, reply.model) == (via_proxy.text, via_proxy.usage, via_proxy.model)
    assert reply.text and dict(call.trailing_metadata())["x-served-by"] == reply.model

    text, usage, model = _streamed_text(direct.stream(_greedy(), timeout=60))
    assert (text, usage, model) == (via_proxy.text, via_proxy.usage, via_proxy.model)
    assert _streamed_text(client.stream(_greedy(), timeout=60))[0] == text


def _stream_error(client: ChatClient, request: pb.ChatRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in client.stream(request, timeout=60):
            pass
    return caught.value


def test_a_stream_refused_for_a_field_carries_bad_request(direct: ChatClient):
    error = _stream_error(direct, build_request("hi", max_output_tokens=1_000_000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in rpc_status.from_call(error).details)
    assert bad_request.field_violations[0].field == "sampling.max_output_tokens"
    assert dict(error.trailing_metadata())["x-request-id"]


def test_a_stream_with_an_unknown_key_is_unauthenticated_with_details(direct_grpc_address: str):
    stranger = key_client(direct_grpc_address, "sk-not-a-key")
    error = _stream_error(stranger, build_request("hi"))
    stranger.close()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in rpc_status.from_call(error).details)
    assert info.reason == "UNAUTHENTICATED" and info.domain == "museserve"


def test_a_rate_limited_stream_carries_retry_info(direct_grpc_address: str):
    limited = key_client(direct_grpc_address, DIRECT_LIMITED_KEY)
    for _ in range(2):  # the tier's burst
        limited.chat(build_request("hi", max_output_tokens=1), timeout=60)
    error = _stream_error(limited, build_request("hi", max_output_tokens=1))
    limited.close()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(error).details)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 60
    assert dict(error.trailing_metadata())["x-ratelimit-remaining-requests"] == "0"


def test_a_message_over_max_request_bytes_is_refused(direct: ChatClient):
    with pytest.raises(grpc.RpcError) as caught:
        direct.chat(build_request("x" * (MAX_REQUEST_BYTES + 1024)), timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_and_reflection_answer_on_the_direct_port(direct_grpc_address: str):
    with grpc.insecure_channel(direct_grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "museserve.v1.ChatService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        [answer] = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in answer.list_services_response.service}
        assert {"museserve.v1.ChatService", "grpc.health.v1.Health"} <= names


def _long_request(request_id: str) -> pb.ChatRequest:
    request = build_request("write at length", temperature=1.0, seed=1, max_output_tokens=LONG_OUTPUT)
    request.request_id = request_id
    return request


def _wait_until_ended(pool_handle, request_id: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = pool_handle.stats.remote().result(timeout_s=10)["recent"].get(request_id)
        if record is not None and record["phase"] not in ("running", "waiting"):
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"request {request_id} still {record} after {timeout_s}s")
        time.sleep(0.05)


def test_cancels_right_after_the_first_token_all_reach_the_pool(direct: ChatClient, pool_handle):
    request_ids = [f"direct-cancel-{i}-{uuid.uuid4().hex}" for i in range(10)]
    for request_id in request_ids:
        call = direct.stream(_long_request(request_id), timeout=60)
        for event in call:
            if event.WhichOneof("event") == "text_delta":
                break
        call.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        assert caught.value.code() == grpc.StatusCode.CANCELLED
    records = {request_id: _wait_until_ended(pool_handle, request_id) for request_id in request_ids}
    assert all(r["phase"] == "cancelled" and r["generated_tokens"] < LONG_OUTPUT for r in records.values()), records


def test_a_client_deadline_ends_the_generation(direct: ChatClient, pool_handle):
    request_id = f"direct-deadline-{uuid.uuid4().hex}"
    with pytest.raises(grpc.RpcError) as caught:
        for _ in direct.stream(_long_request(request_id), timeout=0.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert _wait_until_ended(pool_handle, request_id)["phase"] == "cancelled"
