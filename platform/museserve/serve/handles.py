"""Ray Serve handles behind the gateway's client protocols, and Ray errors as MuseErrors.

A MuseError raised in a replica arrives wrapped in a RayTaskError: it is unwrapped so the
client sees the replica's own status and message. A replica that died, or a deployment
with no replica to take the call, is UNAVAILABLE (the request may be retried); queues
that are full are RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse

from museserve.domain import ChatRequest
from museserve.errors import Internal, MuseError, NotFound, ResourceExhausted, Unavailable
from museserve.messages import GenerationChunk, LiveExtension, LiveOpened, MediaSegment, PreparedRequest, PromptCount

logger = logging.getLogger(__name__)


def as_muse_error(error: BaseException, tier: str) -> MuseError:
    if isinstance(error, RayTaskError):
        # Ray re-raises a replica's exception as a subclass of both RayTaskError and the
        # original class, whose str() is the remote traceback: take the original.
        error = error.cause
    if isinstance(error, MuseError):
        return error
    if isinstance(error, BackPressureError):
        return ResourceExhausted(f"the {tier} tier is at capacity", retry_after_s=1.0)
    if isinstance(error, (RayActorError, DeploymentUnavailableError, ReplicaUnavailableError, TaskCancelledError)):
        return Unavailable(f"the {tier} tier is unavailable; the request may be retried", retry_after_s=1.0)
    logger.error("unexpected error from the %s tier: %r", tier, error)
    return Internal(f"the {tier} tier failed")


class HandlePreprocessClient:
    """Calls to the preprocess tier, each bounded by `timeout_s`: Serve holds a call for a
    deployment with no live replica until one starts (10-20 s after a crash), and the
    client should hear UNAVAILABLE long before that."""

    def __init__(self, handle: DeploymentHandle, timeout_s: float):
        self._handle = handle
        self._timeout_s = timeout_s

    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        return await self._bounded(self._handle.prepare.remote(request, pool))

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        return await self._bounded(self._handle.count.remote(request, pool))

    async def _bounded(self, response: DeploymentResponse) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await response
        except TimeoutError:
            response.cancel()
            raise Unavailable(
                f"the preprocess tier did not answer within {self._timeout_s:g} s; the request may be retried",
                retry_after_s=1.0,
            ) from None
        except Exception as e:
            raise as_muse_error(e, "preprocess") from None


class HandlePoolClient:
    """Generation through a pool deployment. A live request (`live=True`) goes to `converse`;
    its extensions follow it to the replica that holds it (`LiveOpened`, `serve.prefix_router`)."""

    def __init__(self, handle: DeploymentHandle, pool: str):
        self._handle = handle.options(stream=True)
        self._unary = handle.options(stream=False)
        self._tier = f"model pool {pool}"
        self._live_replicas: dict[str, str] = {}  # live request id -> the replica holding it

    async def extend(
        self, request_id: str, token_ids: list[int], media: tuple[MediaSegment, ...] = (), *, close: bool = False
    ) -> None:
        replica = self._live_replicas.get(request_id)
        if replica is None:
            raise NotFound(f"no live request {request_id!r}", field="request_id")
        extension = LiveExtension(request_id, replica, tuple(token_ids), media, close)
        try:
            await self._unary.extend.remote(extension)
        except Exception as e:
            raise as_muse_error(e, self._tier) from None

    async def generate(self, request: PreparedRequest, *, live: bool = False) -> AsyncIterator[GenerationChunk]:
        responses = (self._handle.converse if live else self._handle.generate).remote(request)
        finished = False
        try:
            async for chunk in responses:
                if isinstance(chunk, LiveOpened):
                    self._live_replicas[request.request_id] = chunk.replica
                    chunk = GenerationChunk()  # as the engine's own: the request is admitted
                yield chunk
                if chunk.finish is not None:
                    finished = True
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as e:
            raise as_muse_error(e, self._tier) from None
        finally:
            self._live_replicas.pop(request.request_id, None)
            if not finished:
                # The caller went away (client cancel, deadline) or the stream failed:
                # stop the replica's generation instead of letting it run to the end. Every
                # cancel that reached a gateway stopped its request (docs/serve-layer.md).
                responses.cancel()
