"""The drain signal from the process that owns a local app to every gateway replica.

Serve stops a replica in two steps: it waits for the requests Serve routed to it, then
runs its destructor (the gateway's drain). The direct gRPC port is invisible to Serve, so
until the destructor runs that port keeps admitting, and when the whole app is being
deleted, what it admits may find the model pools already gone. `museserve serve` (and
the test harness) therefore tells the gateways first: `start_drain` flips every gateway
replica to draining (new requests: UNAVAILABLE; the direct port takes no new calls),
then the app is deleted and Serve's own stop drains what is still in flight.

The board is a plain (not detached) actor created by that owning process before the app
is deployed, so it lives exactly as long as the owner. Where nothing owns the app that
way (KubeRay, `serve deploy`), there is no board and Serve's stop alone is the drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import ray
from ray import serve
from ray.actor import ActorHandle
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

logger = logging.getLogger(__name__)

DRAIN_NAMESPACE = "museserve"


def current_app_name() -> str | None:
    """The Serve app of the calling replica; None outside one (`_local_testing_mode` included)."""
    try:
        return serve.get_replica_context().app_name
    except RayServeException:
        return None


def drain_board_name(app_name: str) -> str:
    return f"{app_name}-drain"


@ray.remote(num_cpus=0)
class DrainBoard:
    def __init__(self) -> None:
        self._draining = asyncio.Event()

    async def wait_for_drain(self) -> None:
        """Returns once a drain has started (at once if it already has)."""
        await self._draining.wait()

    def start_drain(self) -> None:
        self._draining.set()


# Boards this process owns, by app. Holding the handle keeps the actor alive: Ray ends a
# non-detached actor once its owner holds no handle to it, name or not.
_owned: dict[str, ActorHandle] = {}


def create_drain_board(app_name: str) -> ActorHandle:
    """Called by the process that deploys the app; the board lives as long as that process
    (or its Ray session: a later session gets a board of its own)."""
    options = {"name": drain_board_name(app_name), "namespace": DRAIN_NAMESPACE, "get_if_exists": True}
    _owned[app_name] = DrainBoard.options(**options).remote()
    return _owned[app_name]


def start_drain(app_name: str, timeout_s: float = 10.0) -> bool:
    """Tells every gateway replica of `app_name` to drain; False when the app has no board."""
    try:
        board = ray.get_actor(drain_board_name(app_name), namespace=DRAIN_NAMESPACE)
        ray.get(board.start_drain.remote(), timeout=timeout_s)
    except (ValueError, RayError) as e:
        logger.warning("no drain signal for app %s: %s", app_name, e)
        return False
    return True


async def watch_for_drain(app_name: str, on_drain: Callable[[], Awaitable[None]]) -> None:
    """Runs in a gateway replica for its lifetime: awaits the board and calls `on_drain`
    once a drain starts. Without a board (or when its owner goes away) it just ends."""
    try:
        board = ray.get_actor(drain_board_name(app_name), namespace=DRAIN_NAMESPACE)
    except ValueError:
        logger.info("app %s has no drain board: the replica drains when Serve stops it", app_name)
        return
    try:
        await board.wait_for_drain.remote()
    except RayError:
        return  # the owner stopped without draining; Serve's stop still drains this replica
    await on_drain()
