"""The cancel board's log, and its gateway and replica clients against an in-process board."""

from __future__ import annotations

import asyncio
import time

import pytest

from museserve.errors import Cancelled
from museserve.serve.cancel_board import CancelLog, CancelSignal, CancelWatcher


class _Method:
    def __init__(self, fn):
        self.remote = fn


class _FakeBoard:
    """What an actor handle to a CancelLog looks like to the clients: `method.remote(...)` awaitables."""

    def __init__(self, log: CancelLog):
        self.cancel = _Method(log.cancel)
        self.watch = _Method(log.watch)


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _eventually(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout_s}s")
        await asyncio.sleep(0.01)


async def test_keys_are_numbered_and_read_after_a_sequence_number():
    log = CancelLog()
    assert await log.cancel(["a", "b"]) == 2
    assert await log.cancel(["c"]) == 3
    epoch, seq, keys = await log.watch(None, 0, 0)
    assert (epoch, seq, keys) == (log.epoch, 3, ["a", "b", "c"])
    assert await log.watch(epoch, 1, 0) == (epoch, 3, ["b", "c"])


async def test_a_watcher_of_another_epoch_gets_every_kept_key():
    log = CancelLog()
    await log.cancel(["a"])
    assert await log.watch("an older board", 7, 0) == (log.epoch, 1, ["a"])


async def test_watch_waits_until_a_key_arrives():
    log = CancelLog()
    await log.cancel(["old"])
    watching = asyncio.create_task(log.watch(log.epoch, 1, 10))
    await asyncio.sleep(0.05)
    assert not watching.done()
    await log.cancel(["new"])
    # Liveness: the new key wakes the watcher, long before its own 10 s poll would end.
    assert await asyncio.wait_for(watching, 0.5) == (log.epoch, 2, ["new"])


async def test_watch_times_out_with_no_keys():
    log = CancelLog()
    await log.cancel(["a"])
    watching = asyncio.create_task(log.watch(log.epoch, 1, 0.2))
    await asyncio.sleep(0.05)
    assert not watching.done()  # it waits out its poll rather than answering at once
    assert await asyncio.wait_for(watching, 1) == (log.epoch, 1, [])  # and then answers: no hang


async def test_the_log_keeps_at_most_max_keys_and_drops_expired_ones():
    clock = _Clock()
    log = CancelLog(max_keys=3, ttl_s=10, clock=clock)
    await log.cancel(["a", "b", "c", "d", "e"])
    assert (await log.watch(None, 0, 0))[2] == ["c", "d", "e"]
    clock.now += 6
    await log.cancel(["f"])
    clock.now += 6
    assert await log.watch(None, 0, 0) == (log.epoch, 6, ["f"])


async def test_watcher_aborts_only_the_requests_it_holds():
    aborted: list[str] = []
    watcher = CancelWatcher("app", aborted.append)
    with watcher.holding("k1", "req-1"):
        watcher.deliver(["unknown", "k1"])
        assert aborted == ["req-1"]
    watcher.deliver(["k1"])
    assert aborted == ["req-1"]
    with watcher.holding(None, "req-2"):
        pass


def test_a_key_cancelled_before_its_request_arrives_refuses_the_request():
    watcher = CancelWatcher("app", lambda request_id: None)
    watcher.deliver(["early"])
    with pytest.raises(Cancelled), watcher.holding("early", "req-1"):
        pytest.fail("the request should not start")


async def test_signal_reaches_the_watcher_through_the_board():
    board = _FakeBoard(CancelLog())
    aborted: list[str] = []
    watcher = CancelWatcher("app", aborted.append, connect=lambda app: board)
    signal = CancelSignal("app", connect=lambda app: board)
    watcher.start()
    try:
        with watcher.holding("k1", "req-1"):
            signal.send("k1")
            await _eventually(lambda: aborted == ["req-1"])
    finally:
        watcher.stop()


async def test_both_sides_reconnect_after_the_board_fails():
    boards = [_FakeBoard(CancelLog())]
    attempts = {"signal": 0, "watcher": 0}

    def connect(side: str):
        def connect_once(app: str) -> _FakeBoard:
            attempts[side] += 1
            if attempts[side] == 1:
                raise ConnectionError("the board is restarting")
            return boards[0]

        return connect_once

    aborted: list[str] = []
    watcher = CancelWatcher("app", aborted.append, connect=connect("watcher"))
    signal = CancelSignal("app", connect=connect("signal"))
    watcher.start()
    try:
        with watcher.holding("k1", "req-1"):
            signal.send("k1")
            await _eventually(lambda: aborted == ["req-1"])
    finally:
        watcher.stop()
    assert attempts == {"signal": 2, "watcher": 2}


def test_send_outside_an_event_loop_does_not_raise():
    CancelSignal("app", connect=lambda app: pytest.fail("must not connect")).send("k1")


async def test_outside_a_serve_replica_there_is_no_signal_and_no_watching():
    assert CancelSignal.for_this_replica() is None
    watcher = CancelWatcher(None, lambda request_id: None, connect=lambda app: pytest.fail("must not connect"))
    watcher.start()
    assert not watcher.running
