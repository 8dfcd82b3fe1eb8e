"""Our own cancel signal, gateway -> model pool replica, that does not rely on Ray Serve
delivering the cancellation of a stream (it loses some).

Each pool call carries a random cancel key. When a gateway's stream ends without
finishing (client cancel, deadline, error) it sends the key to the app's `CancelBoard`,
a small Ray actor; every pool replica long-polls the board and aborts the request that
it holds under that key. Keys are per call, never client-chosen: a signal cannot end
another tenant's request, a retry, or a mirror of the same request id on another pool.

The board is a detached actor named per Serve app, created by whichever process asks
first, restarted by Ray when its process dies (its log is then lost; watchers notice the
new epoch). `ray.shutdown()` of a local cluster ends it; on a long-lived cluster it
outlives `serve.delete` of the app (one idle process, reused by the next deployment of
that app name) until the cluster goes (a KubeRay RayService upgrade replaces the cluster)
or someone runs `ray.kill(ray.get_actor(board_name(app), namespace=BOARD_NAMESPACE))`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
from ray import serve
from ray.serve.exceptions import RayServeException

from museserve.errors import Cancelled

logger = logging.getLogger(__name__)

BOARD_NAMESPACE = "museserve"
KEY_TTL_S = 30.0  # a cancel older than this is of no use: the stream has long ended
MAX_KEYS = 10_000
WATCH_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 5.0  # beyond its own wait, a board call this late counts as failed (a hung board)
RETRY_MIN_S, RETRY_MAX_S = 0.1, 5.0


def board_name(app_name: str) -> str:
    return f"{app_name}-cancel-board"


def current_app_name() -> str | None:
    """The Serve app of the calling replica; None outside one (`_local_testing_mode` included)."""
    try:
        return serve.get_replica_context().app_name
    except RayServeException:
        return None


def new_cancel_key(request_id: str) -> str:
    """Unguessable per call; the request id in front is for people reading the board."""
    return f"{request_id}/{uuid.uuid4().hex}"


class CancelLog:
    """A bounded, time-limited log of cancel keys, numbered from 1. The Ray actor is this
    class as is. `epoch` changes when the log is recreated, so a watcher that followed an
    older log starts over instead of waiting for sequence numbers it already passed."""

    def __init__(self, max_keys: int = MAX_KEYS, ttl_s: float = KEY_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.epoch = uuid.uuid4().hex
        self.last_seq = 0
        self._max_keys, self._ttl_s, self._clock = max_keys, ttl_s, clock
        self._entries: deque[tuple[int, float, str]] = deque()  # (seq, time, key), seq ascending
        self._appended = asyncio.Event()  # replaced on each append: waiters hold the one they saw

    async def cancel(self, keys: list[str]) -> int:
        now = self._clock()
        for key in keys:
            self.last_seq += 1
            self._entries.append((self.last_seq, now, key))
        self._prune()
        self._appended.set()
        self._appended = asyncio.Event()
        return self.last_seq

    async def watch(self, epoch: str | None, after_seq: int, timeout_s: float) -> tuple[str, int, list[str]]:
        """Keys after `after_seq` of this epoch (all kept keys for another epoch), at once if
        there are any, else when some arrive or after `timeout_s` with none."""
        if epoch != self.epoch:
            after_seq = 0
        if self.last_seq <= after_seq:
            try:
                await asyncio.wait_for(self._appended.wait(), timeout_s)
            except TimeoutError:
                pass
        self._prune()
        return self.epoch, self.last_seq, [key for seq, _, key in self._entries if seq > after_seq]

    def _prune(self) -> None:
        oldest = self._clock() - self._ttl_s
        while self._entries and (len(self._entries) > self._max_keys or self._entries[0][1] < oldest):
            self._entries.popleft()


CancelBoard = ray.remote(num_cpus=0, max_concurrency=1000, max_restarts=-1)(CancelLog)


def connect_board(app_name: str) -> Any:
    """The app's board, created if no process has yet. Blocks on a GCS call: keep it off
    an event loop."""
    return CancelBoard.options(
        name=board_name(app_name), namespace=BOARD_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


class _Reconnecting:
    """Backoff and log-once bookkeeping for a loop that talks to the board."""

    def __init__(self, what: str):
        self._what, self._delay, self._failing = what, RETRY_MIN_S, False

    async def failed(self, error: Exception) -> None:
        if not self._failing:
            logger.warning("%s: the cancel board is unreachable (%r); retrying", self._what, error)
            self._failing = True
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, RETRY_MAX_S)

    def succeeded(self) -> None:
        if self._failing:
            logger.info("%s: the cancel board is reachable again", self._what)
        self._delay, self._failing = RETRY_MIN_S, False


class CancelSignal:
    """The gateway side: `send(key)` queues the key and returns at once; a task on the
    caller's loop delivers queued keys in batches and retries until they expire."""

    def __init__(self, app_name: str, connect: Callable[[str], Any] = connect_board):
        self._app_name, self._connect = app_name, connect
        self._board: Any = None
        self._pending: dict[str, float] = {}  # key -> time first queued, oldest first
        self._task: asyncio.Task | None = None
        self._retry = _Reconnecting("cancel signal")

    @classmethod
    def for_this_replica(cls) -> CancelSignal | None:
        app_name = current_app_name()
        return None if app_name is None else cls(app_name)

    def send(self, key: str) -> None:
        """Never raises and never waits: it runs in `finally` blocks of cancelled streams."""
        try:
            if len(self._pending) >= MAX_KEYS:
                self._pending.pop(next(iter(self._pending)))
            self._pending.setdefault(key, time.monotonic())
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._deliver())
        except Exception:
            logger.warning("cancel signal for key %s not sent", key, exc_info=True)

    async def _deliver(self) -> None:
        while self._pending:
            oldest = time.monotonic() - KEY_TTL_S
            batch = {k: t for k, t in self._pending.items() if t >= oldest}
            self._pending.clear()
            if not batch:
                return
            try:
                if self._board is None:
                    self._board = await asyncio.get_running_loop().run_in_executor(None, self._connect, self._app_name)
                await asyncio.wait_for(self._board.cancel.remote(list(batch)), CALL_TIMEOUT_S)
            except Exception as e:
                self._board = None
                self._pending = batch | self._pending
                await self._retry.failed(e)
            else:
                self._retry.succeeded()


class CancelWatcher:
    """The pool replica side: long-polls the board and calls `abort(request_id)` for the
    requests this replica holds under a cancelled key. It must run on the loop of the
    engine it aborts: `start()` from an async method of the replica. With no app name
    (not in a Serve replica) it never starts: there is no board to watch."""

    def __init__(
        self, app_name: str | None, abort: Callable[[str], None], connect: Callable[[str], Any] = connect_board
    ):
        self._app_name, self._abort, self._connect = app_name, abort, connect
        self._held: dict[str, str] = {}  # cancel key -> request id
        self._seen: OrderedDict[str, float] = OrderedDict()  # cancelled keys, oldest first
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._app_name is not None and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @contextmanager
    def holding(self, key: str | None, request_id: str) -> Iterator[None]:
        """Registers a request under its key for its lifetime; a key cancelled before the
        request arrived (the gateway gave up while the call was queued) refuses it."""
        if key is None:
            yield
            return
        if key in self._seen:
            raise Cancelled("the request was cancelled")
        self._held[key] = request_id
        try:
            yield
        finally:
            self._held.pop(key, None)

    def deliver(self, keys: Iterable[str]) -> None:
        now = time.monotonic()
        for key in keys:
            self._seen[key] = now
            self._seen.move_to_end(key)
            request_id = self._held.get(key)
            if request_id is not None:
                logger.info("request %s cancelled through the cancel board", request_id)
                try:
                    self._abort(request_id)
                except Exception:
                    logger.exception("abort of request %s failed", request_id)
        oldest = now - KEY_TTL_S
        while self._seen and (len(self._seen) > MAX_KEYS or next(iter(self._seen.values())) < oldest):
            self._seen.popitem(last=False)

    async def _run(self) -> None:
        retry = _Reconnecting("cancel watcher")
        board: Any = None
        epoch: str | None = None
        seq = 0
        while True:
            try:
                if board is None:
                    board = await asyncio.get_running_loop().run_in_executor(None, self._connect, self._app_name)
                watching = board.watch.remote(epoch, seq, WATCH_TIMEOUT_S)
                epoch, seq, keys = await asyncio.wait_for(watching, WATCH_TIMEOUT_S + CALL_TIMEOUT_S)
            except Exception as e:
                board = None
                await retry.failed(e)
                continue
            retry.succeeded()
            self.deliver(keys)
