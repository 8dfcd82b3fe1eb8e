"""A client that goes away stops generation in the model replica, observed from the replica."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from museserve.client import ChatClient, build_request

pytestmark = pytest.mark.integration

LONG_OUTPUT = 1000  # far more tokens than the tiny model makes before the client leaves


def _long_request(request_id: str):
    request = build_request("write at length", temperature=1.0, seed=1, max_output_tokens=LONG_OUTPUT)
    request.request_id = request_id
    return request


def _record(pool_handle, request_id: str) -> dict | None:
    return pool_handle.stats.remote().result(timeout_s=10)["recent"].get(request_id)


def _wait_for_phase(pool_handle, request_id: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = _record(pool_handle, request_id)
        if record is not None and record["phase"] != "running" and record["phase"] != "waiting":
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"request {request_id} still {record} after {timeout_s}s")
        time.sleep(0.05)


def _assert_stopped(pool_handle, request_id: str) -> None:
    record = _wait_for_phase(pool_handle, request_id)
    assert record["phase"] == "cancelled", record
    assert record["generated_tokens"] < LONG_OUTPUT
    tokens_at_stop = record["generated_tokens"]
    time.sleep(0.5)
    assert _record(pool_handle, request_id)["generated_tokens"] == tokens_at_stop


@pytest.mark.parametrize("attempt", range(3))
def test_cancel_mid_stream_stops_generation_in_the_replica(client: ChatClient, pool_handle, attempt: int):
    request_id = f"cancel-{uuid.uuid4().hex}"
    call = client.stream(_long_request(request_id), timeout=60)
    received = 0
    for event in call:
        if event.WhichOneof("event") == "text_delta":
            received += 1
        if received == 3:
            break
    call.cancel()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    _assert_stopped(pool_handle, request_id)


def test_client_deadline_ends_the_stream_and_the_generation(client: ChatClient, pool_handle):
    request_id = f"deadline-{uuid.uuid4().hex}"
    with pytest.raises(grpc.RpcError) as caught:
        for _ in client.stream(_long_request(request_id), timeout=0.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_stopped(pool_handle, request_id)


def test_unary_deadline_is_deadline_exceeded(client: ChatClient, pool_handle):
    request_id = f"deadline-unary-{uuid.uuid4().hex}"
    with pytest.raises(grpc.RpcError) as caught:
        client.chat(_long_request(request_id), timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _assert_stopped(pool_handle, request_id)
