"""Faults in the tiers around the model: a slow Redis, a killed preprocess replica and a
killed gateway replica. Every request in flight ends within seconds with OK or a status
the client may retry (never a hang, never INTERNAL), and the app serves again afterwards.

The file sorts last in the session (after `test_replica_faults.py`), and each test waits
until the tier it broke answers again, so nothing after it sees the fault. The Redis tests
go first: they break nothing that outlives them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest

from museserve.client import ChatClient, build_request
from museserve.config.gateway import GatewayConfig, RateSpec, RedisConfig, TierConfig
from museserve.domain import Identity
from museserve.errors import Unavailable
from museserve.gateway.identity import key_digest
from museserve.gateway.quota import QuotaGuard
from museserve.v1 import chat_pb2 as pb
from tests.integration.conftest import TEST_KEY, key_client
from tests.media_samples import png_bytes
from tests.redis_server import RedisServer, RedisSleep
from tests.support import kill_replica

pytestmark = pytest.mark.integration

ENDS_WITHIN_S = 5.0  # how long a request in flight may take to end once its replica is gone
RECOVERY_S = 90.0  # Serve replaces a replica in 10-20 s on a loaded box
RETRYABLE = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
STREAM_ENDINGS = RETRYABLE | {grpc.StatusCode.CANCELLED}


@dataclass
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    details: str = ""


def _outcome(started: float, call: Callable[[], object]) -> Outcome:
    try:
        call()
        return Outcome(started, time.monotonic(), grpc.StatusCode.OK)
    except grpc.RpcError as e:
        return Outcome(started, time.monotonic(), e.code(), e.details() or "")


def _serves_again(call: Callable[[], object], what: str) -> float:
    """Retries `call` as a client should (UNAVAILABLE, or a deadline while Serve has no
    replica) until it succeeds; returns the seconds it took."""
    started = time.monotonic()
    while True:
        outcome = _outcome(time.monotonic(), call)
        if outcome.code == grpc.StatusCode.OK:
            return time.monotonic() - started
        assert outcome.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), outcome
        if time.monotonic() - started > RECOVERY_S:
            pytest.fail(f"{what} did not serve again within {RECOVERY_S:g} s")
        time.sleep(0.5)


@pytest.fixture
def slow_redis_tenant(grpc_address: str, redis_server: RedisServer) -> Iterator[ChatClient]:
    """A tenant of its own under the probe tier's request limit (the config's limited
    tenants are spent by earlier tests), its key kept in Redis and already looked up."""
    key = f"sk-test-slow-{uuid.uuid4().hex[:8]}"
    redis_server.command("HSET", f"museserve:apikey:{key_digest(key)}", "tenant", f"slow-{key[-8:]}", "tier", "probe")
    client = key_client(grpc_address, key, user="slow")
    client.chat(build_request("hi", max_output_tokens=1), timeout=30)  # caches the key in the gateway
    yield client
    client.close()


def test_a_slow_redis_is_decided_locally_within_the_timeout_and_then_in_redis_again(
    slow_redis_tenant: ChatClient, redis_server: RedisServer, app_config
) -> None:
    timeout_s = app_config.gateway.redis.timeout_ms / 1000
    sleep_s = 3 * timeout_s
    sleeper = RedisSleep(redis_server, sleep_s)
    asleep_since = time.monotonic()
    latencies = []
    try:
        while time.monotonic() - asleep_since < sleep_s - 1.0:
            started = time.monotonic()
            assert slow_redis_tenant.chat(build_request("hi", max_output_tokens=1), timeout=30).usage.prompt_tokens
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)  # paced: the tier's burst of 50 bounds what the replica's own limiter admits
        answered_at = time.monotonic()
    finally:
        sleeper.join()
    # fail_open: a decision waits at most timeout_ms for Redis, then the replica's own limiter
    # decides, and for a back-off after that it does not ask Redis at all.
    assert answered_at < sleeper.woke, "the requests waited for Redis to wake up"
    assert max(latencies) < timeout_s + 1.5, latencies
    assert len(latencies) >= 2

    # The back-off ends; decisions go to Redis again.
    redis_server.wait_for_decisions(
        lambda: slow_redis_tenant.chat(build_request("hi", max_output_tokens=1), timeout=30), 10
    )


@pytest.mark.asyncio(loop_scope="session")
async def test_fail_closed_refuses_within_the_timeout_while_redis_sleeps() -> None:
    spec = RateSpec(requests_per_minute=600)
    with RedisServer() as server:
        redis = RedisConfig(url=server.url, timeout_ms=200, on_unavailable="fail_closed")
        guard = QuotaGuard(
            GatewayConfig(tiers={"default": TierConfig(tenant=spec)}, redis=redis), retry_backend_after_s=0.1
        )
        identity = Identity(tenant=f"t-{uuid.uuid4().hex}", tier="default")
        try:
            await guard.admit(identity, 1)  # loads the script
            sleeper = RedisSleep(server, 2)
            with pytest.raises(Unavailable) as caught:
                await guard.admit(identity, 1)
            refused_at = time.monotonic()
            assert caught.value.retry_after_s is not None
            sleeper.join()
            assert refused_at < sleeper.woke  # refused at the 200 ms timeout, not after the 2 s sleep
            before = server.evalsha_calls()
            assert (await guard.admit(identity, 1)).metadata
            assert server.evalsha_calls() == before + 1  # decided in Redis again
            assert guard.decisions_by_outcome["unavailable"] == 1
        finally:
            await guard.close()


def _with_image(text: str, seed: int) -> pb.ChatRequest:
    request = build_request(text, temperature=0.0, max_output_tokens=4)
    png = png_bytes(128, 128, seed=seed)  # random pixels: ~48 KiB, under the session's 64 KiB limit
    request.messages[0].content.append(pb.ContentPart(image=pb.Image(data=png, mime_type="image/png")))
    return request


def test_a_killed_preprocess_replica_ends_media_requests_and_is_replaced(client: ChatClient) -> None:
    """Text is tokenized in the gateway; only media goes through the preprocess tier."""
    stop = threading.Event()
    outcomes: list[Outcome] = []

    def send_until_stopped(worker: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            request = _with_image("what is this?", seed=worker * 1000 + i)
            outcomes.append(_outcome(time.monotonic(), lambda r=request: client.chat(r, timeout=60)))

    with ThreadPoolExecutor(max_workers=4) as workers:
        futures = [workers.submit(send_until_stopped, w) for w in range(4)]
        try:
            time.sleep(1.0)  # requests are flowing
            killed_at = kill_replica("preprocess")
            time.sleep(ENDS_WITHIN_S)
        finally:
            stop.set()
        for f in futures:
            f.result(timeout=90)

    in_flight = [o for o in outcomes if o.started < killed_at < o.ended]
    assert in_flight, "no request was in flight when the replica was killed"
    for o in in_flight:
        # At the dead replica: UNAVAILABLE at once. Held by Serve's router for a replica that is
        # not there yet: UNAVAILABLE after preprocess.call_timeout_s (4 s), or served when the
        # new replica came up first.
        assert o.ended - killed_at < ENDS_WITHIN_S or o.code == grpc.StatusCode.OK, o
    assert {o.code for o in outcomes} <= RETRYABLE, [o for o in outcomes if o.code not in RETRYABLE]
    assert not any("Traceback" in o.details for o in outcomes)
    _serves_again(lambda: client.chat(_with_image("and now?", seed=7), timeout=30), "the preprocess tier")


def _drain(stream, started: float) -> Outcome:
    return _outcome(started, lambda: [None for _ in stream])


def _fresh_chat(address: str) -> None:
    """On a new channel: the old one's reconnect back-off must not decide the recovery time."""
    c = key_client(address, TEST_KEY)
    try:
        c.chat(build_request("back?", max_output_tokens=2), timeout=30)
    finally:
        c.close()


def test_a_killed_gateway_replica_ends_its_streams_and_is_replaced(
    client: ChatClient, direct_grpc_address: str, grpc_address: str
) -> None:
    direct = key_client(direct_grpc_address, TEST_KEY)
    try:
        streams = []
        for c in (client, direct, client, direct):
            stream = c.stream(build_request("keep going", seed=5, max_output_tokens=1000), timeout=60)
            next(stream)  # the gateway is streaming from the pool
            streams.append(stream)
        with ThreadPoolExecutor(max_workers=len(streams)) as workers:
            killed_at = kill_replica("gateway")
            outcomes = list(workers.map(lambda s: _drain(s, killed_at), streams))
        for o in outcomes:
            assert o.code in STREAM_ENDINGS, o
            assert o.ended - killed_at < ENDS_WITHIN_S, o
            assert "Traceback" not in o.details

        took = _serves_again(lambda: _fresh_chat(grpc_address), "the proxy")
        _serves_again(lambda: _fresh_chat(direct_grpc_address), "the direct port")
        print(f"gateway served again {took:.1f} s after the kill")
    finally:
        direct.close()
