"""The routing tier through the real app: API keys, rate limits kept in a real Redis,
shedding by tier, sticky A/B and mirroring. Limits are per tenant, and each test uses a
tenant of its own (see conftest), so they do not interfere."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from museserve.client import ChatClient, build_request
from museserve.gateway.identity import key_digest
from museserve.gateway.mirror_sinks import read_records
from museserve.gateway.routing import unit_hash
from museserve.v1 import chat_pb2 as pb
from tests.integration.conftest import (
    AB_POOL,
    AB_SHARE,
    BULK_KEY,
    CANDIDATE_POOL,
    METERED_KEY,
    MIRROR_FRACTION,
    PROBE_KEY,
    TEST_KEY,
    key_client,
)
from tests.redis_server import RedisServer
from tests.support import eventually


def short(text: str = "hi", tokens: int = 1, request_id: str = "", **fields) -> pb.ChatRequest:
    request = build_request(text, max_output_tokens=tokens, temperature=0.0, **fields)
    request.request_id = request_id
    return request


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer sk-not-a-key")], [("x-api-key", "sk-nope")]])
def test_missing_or_unknown_key_is_unauthenticated(grpc_address: str, metadata: list) -> None:
    client = ChatClient(grpc_address, metadata=metadata)
    with pytest.raises(grpc.RpcError) as caught:
        client.chat(short(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details().startswith("metadata.authorization: ")
    assert "sk-" not in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        client.list_models(timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client.close()


def test_x_api_key_header_is_accepted(grpc_address: str) -> None:
    client = ChatClient(grpc_address, metadata=[("x-api-key", TEST_KEY)])
    assert client.chat(short(), timeout=30).usage.prompt_tokens > 0
    client.close()


def test_a_key_kept_in_redis_is_looked_up_and_maps_to_its_tenant(grpc_address: str, redis_server: RedisServer) -> None:
    key = "sk-test-from-redis"
    redis_server.command("HSET", f"museserve:apikey:{key_digest(key)}", "tenant", "from-redis", "tier", "probe")
    client = key_client(grpc_address, key)
    assert client.chat(short(), timeout=30).usage.prompt_tokens > 0
    client.close()
    # Charged to its tenant under its tier's limits: the tenant's request limit now has state.
    assert redis_server.command("EXISTS", "museserve:rl:{from-redis}:tenant:requests") == b":1\r\n"


def test_200_concurrent_requests_against_a_limit_of_50_admit_exactly_50(
    grpc_address: str, redis_server: RedisServer
) -> None:
    client = key_client(grpc_address, PROBE_KEY)
    before = redis_server.evalsha_calls()

    def call(i: int) -> grpc.RpcError | None:
        try:
            client.chat(short(), timeout=60)
            return None
        except grpc.RpcError as e:
            return e

    with ThreadPoolExecutor(max_workers=200) as pool:
        outcomes = list(pool.map(call, range(200)))
    refused = [o for o in outcomes if o is not None]
    assert {(o.code(), o.details()[:40]) for o in refused} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit: tenant probe is over 1 reque")
    }
    assert len(outcomes) - len(refused) == 50
    # One Redis round trip per decision: 200 decisions, 200 script calls.
    assert redis_server.evalsha_calls() - before == 200
    status = rpc_status.from_call(refused[0])
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details)
    assert 0 < retry.retry_delay.ToTimedelta().total_seconds() <= 60
    trailers = dict(refused[0].trailing_metadata())
    assert trailers["x-ratelimit-remaining-requests"] == "0"
    assert "tenant probe is over 1 requests/minute" in refused[0].details()
    client.close()


def test_output_tokens_are_settled_after_a_cancelled_stream(grpc_address: str, redis_server: RedisServer) -> None:
    key = "museserve:rl:{metered}:tenant:tokens"

    def tat() -> float:
        reply = redis_server.command("GET", key)
        return float(reply.split(b"\r\n")[1]) if reply.startswith(b"$") and not reply.startswith(b"$-1") else 0.0

    client = key_client(grpc_address, METERED_KEY)
    stream = client.stream(short("tell me a long story", tokens=200))
    deltas = 0
    for event in stream:
        if event.HasField("text_delta"):
            deltas += 1
            if deltas == 1:
                after_admission = tat()  # prompt tokens charged
            if deltas == 10:
                break
    stream.cancel()
    # 1 token per minute: each settled token moves the stored arrival time by 60 s.
    eventually(lambda: tat() > after_admission, 10, "output token settlement")
    settled = round((tat() - after_admission) / 60.0)
    assert 10 <= settled < 200
    client.close()


def test_a_tier_with_a_small_share_is_shed_at_once_while_others_are_served(grpc_address: str) -> None:
    bulk = key_client(grpc_address, BULK_KEY)
    streams = [bulk.stream(short("go on", tokens=400)) for _ in range(40)]
    errors: list[grpc.RpcError] = []
    opened = []
    for s in streams:
        try:
            next(s)
            opened.append(s)
        except grpc.RpcError as e:
            errors.append(e)
    try:
        assert len(opened) == 25  # 10% of muse-tiny's 256 in-flight requests
        assert {e.code() for e in errors} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert "muse-tiny is at capacity" in errors[0].details()
        top = key_client(grpc_address, TEST_KEY)
        assert top.chat(short(), timeout=30).usage.prompt_tokens > 0  # the default tier still has room
        top.close()
    finally:
        for s in opened:
            s.cancel()
        bulk.close()


def test_ab_split_is_sticky_per_user_and_reported(grpc_address: str) -> None:
    served: dict[str, set[str]] = {}
    for i in range(16):
        user = f"ab-user-{i}"
        client = key_client(grpc_address, TEST_KEY, user=user)
        for _ in range(2):
            _, rpc = client.stub.Chat.with_call(short(model=AB_POOL), timeout=30, metadata=client.metadata)
            served.setdefault(user, set()).add(dict(rpc.trailing_metadata())["x-served-by"])
        client.close()
    for user, pools in served.items():
        expected = CANDIDATE_POOL if unit_hash("ab", AB_POOL, "tester", user) < AB_SHARE else AB_POOL
        assert pools == {expected}, user
    assert len({next(iter(p)) for p in served.values()}) == 2


def test_mirrored_requests_are_recorded_in_the_redis_stream(grpc_address: str, redis_server: RedisServer) -> None:
    user = next(f"m-{i}" for i in range(100) if unit_hash("ab", AB_POOL, "tester", f"m-{i}") >= AB_SHARE)
    client = key_client(grpc_address, TEST_KEY, user=user)  # a user on the primary side
    ids = [f"mirror-probe-{i}" for i in range(60)]
    for rid in ids:
        client.chat(short(model=AB_POOL, tokens=3, request_id=rid), timeout=30)
    client.close()
    expected = {rid for rid in ids if unit_hash("mirror", rid) < MIRROR_FRACTION}
    assert 0.1 < len(expected) / len(ids) < 0.5  # the fraction, give or take sampling

    def recorded() -> dict:
        return {r.request_id: r for r in read_records(redis_server.url) if r.request_id.startswith("mirror-probe-")}

    eventually(lambda: set(recorded()) == expected, 30, "mirror records for the sampled requests")
    record = recorded()[min(expected)]
    assert record.primary.pool == AB_POOL and record.candidate.pool == CANDIDATE_POOL
    assert record.primary.status == record.candidate.status == "OK"
    assert record.primary.text is not None and record.input is None  # content: outputs
    assert record.tenant == "tester"


def test_redis_outage_fails_open_onto_the_local_limiter_and_recovers(
    grpc_address: str, redis_server: RedisServer
) -> None:
    client = key_client(grpc_address, METERED_KEY, user="outage")
    redis_server.stop()
    try:
        # The deadline is the liveness bound: an outage must not hold the request past it.
        assert client.chat(short(), timeout=10).usage.prompt_tokens > 0  # admitted by the replica's own limiter
    finally:
        redis_server.start()

    # After the back-off the decisions go to Redis again (a fresh server: its script cache is
    # empty, so the first call reloads the script).
    def decided_in_redis() -> bool:
        client.chat(short(), timeout=30)
        stats = redis_server.command("INFO", "commandstats").decode()
        return "cmdstat_eval" in stats

    eventually(decided_in_redis, 20, "decisions back in Redis")
    client.close()
