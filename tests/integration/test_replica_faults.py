"""A model replica that dies mid-stream ends the stream with UNAVAILABLE, not a hang.

Runs last in the session (file order): Serve replaces the replica and the test waits
until the pool answers again, so nothing after it sees the fault.
"""

from __future__ import annotations

import time

import grpc
import pytest

from museserve.client import ChatClient, build_request
from tests.support import kill_replica

pytestmark = pytest.mark.integration


def test_a_killed_model_replica_ends_the_stream_with_unavailable(client: ChatClient, app_config):
    pool = app_config.pools[0].name
    # A hang would end with DEADLINE_EXCEEDED after 15 s, failing the status check below.
    call = client.stream(build_request("keep going", seed=3, max_output_tokens=1000), timeout=15)
    next(call)
    kill_replica(f"pool-{pool}")
    with pytest.raises(grpc.RpcError) as caught:
        for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "Traceback" not in caught.value.details()

    deadline = time.monotonic() + 90
    while True:  # Serve starts a new replica; the pool serves again
        try:
            reply = client.chat(build_request("are you back?", max_output_tokens=4), timeout=10)
            break
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), e.details()
            if time.monotonic() > deadline:
                pytest.fail("the pool did not come back within 90 s")
            time.sleep(0.5)
    assert reply.usage.output_tokens >= 1
