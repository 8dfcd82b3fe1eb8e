"""Our cancel signal through the cancel board ends a request in the model replica on its
own, without Ray's cancellation, and the gateway sends it when a client goes away."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import ray

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig
from museserve.serve.cancel_board import CancelSignal, connect_board, new_cancel_key
from tests.support import prepared_request

pytestmark = pytest.mark.integration

LONG_OUTPUT = 1000  # far more tokens than the tiny model makes before the signal lands


async def _record(pool_handle, request_id: str) -> dict | None:
    return (await pool_handle.stats.remote())["recent"].get(request_id)


async def _wait_until_ended(pool_handle, request_id: str, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        record = await _record(pool_handle, request_id)
        if record is not None and record["phase"] not in ("waiting", "running"):
            return record
        if time.monotonic() > deadline:
            pytest.fail(f"request {request_id} still {record} after {timeout_s}s")
        await asyncio.sleep(0.05)


async def _board_keys(app_name: str) -> list[str]:
    board = await asyncio.get_running_loop().run_in_executor(None, connect_board, app_name)
    return (await board.watch.remote(None, 0, 0))[2]


async def _cancel_through_the_board_alone(app_config: MuseServeConfig, pool_handle) -> None:
    pool = app_config.pools[0].name
    request_id = f"board-{uuid.uuid4().hex}"
    key = new_cancel_key(request_id)
    request = prepared_request(request_id, pool=pool, temperature=1.0, seed=1, max_output_tokens=LONG_OUTPUT)
    stream = pool_handle.options(stream=True).generate.remote(request, key)
    for _ in range(3):
        assert (await stream.__anext__()).finish is None
    CancelSignal(app_config.app_name).send(key)
    # The Ray call is never cancelled: only the signal can end it.
    with pytest.raises(Exception) as caught:
        async with asyncio.timeout(10):
            async for chunk in stream:
                assert chunk.finish is None, "the request finished before the signal landed"
    assert "cancelled" in str(caught.value), caught.value
    record = await _wait_until_ended(pool_handle, request_id)
    assert record["phase"] == "cancelled", record
    assert record["generated_tokens"] < LONG_OUTPUT
    stats = await pool_handle.stats.remote()
    assert stats["cancel_watcher_running"]


async def test_the_signal_alone_ends_a_stream_in_the_replica(app_config: MuseServeConfig, pool_handle):
    await _cancel_through_the_board_alone(app_config, pool_handle)


async def test_the_signal_survives_the_board_being_killed(app_config: MuseServeConfig, pool_handle):
    ray.kill(connect_board(app_config.app_name), no_restart=True)
    await _cancel_through_the_board_alone(app_config, pool_handle)


def _long_request(request_id: str, max_output_tokens: int):
    request = build_request("write at length", temperature=1.0, seed=1, max_output_tokens=max_output_tokens)
    request.request_id = request_id
    return request


async def test_a_client_cancel_sends_the_signal_and_a_finished_stream_does_not(
    app_config: MuseServeConfig, client: ChatClient, pool_handle
):
    finished_id, cancelled_id = f"done-{uuid.uuid4().hex}", f"gone-{uuid.uuid4().hex}"

    def client_side() -> None:
        for _ in client.stream(_long_request(finished_id, 4), timeout=30):
            pass
        call = client.stream(_long_request(cancelled_id, LONG_OUTPUT), timeout=30)
        deltas = 0
        for event in call:
            deltas += event.WhichOneof("event") == "text_delta"
            if deltas == 3:
                break
        call.cancel()

    await asyncio.get_running_loop().run_in_executor(None, client_side)
    deadline = time.monotonic() + 10
    while not any(key.startswith(f"{cancelled_id}/") for key in await _board_keys(app_config.app_name)):
        if time.monotonic() > deadline:
            pytest.fail("the gateway sent no cancel signal for the cancelled stream")
        await asyncio.sleep(0.05)
    assert not any(key.startswith(f"{finished_id}/") for key in await _board_keys(app_config.app_name))
    assert (await _wait_until_ended(pool_handle, cancelled_id))["phase"] == "cancelled"
