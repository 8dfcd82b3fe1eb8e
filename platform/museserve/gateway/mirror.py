"""Shadow mirroring: a sampled copy of a request runs, detached, on a candidate pool, and
both answers are written as one record for offline grading.

Isolation from the primary is the point:
- the primary only calls `MirrorTicket.primary_ended`, which sets a future and returns;
- the copy runs in its own task, under its own deadline and a per-replica cap on copies
  in flight (over the cap it is skipped, never queued);
- the copy runs at the lowest scheduling priority, under a request id of its own, and
  never touches the rate limiter;
- whatever the candidate does (fail, hang, crash), it ends in a record or a metric.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from museserve.config import MirrorConfig
from museserve.domain import ChatRequest
from museserve.errors import MuseError
from museserve.gateway.capture import StreamCapture
from museserve.gateway.mirror_records import MirrorRecord, MirrorSide, apply_content_policy, messages_digest, sha256_hex
from museserve.gateway.mirror_sinks import MirrorSink, RedisMirrorSink
from museserve.gateway.pool_loads import POOL_LOADS, PoolLoads

if TYPE_CHECKING:
    from museserve.gateway.gateway import PoolClient, PreprocessClient

logger = logging.getLogger(__name__)

MIRROR_PRIORITY = 1_000_000  # behind every tier's own priority
PRIMARY_WAIT_S = 3600.0  # a primary that never reports is abandoned after this


class MirrorObserver(Protocol):
    def mirror(self, outcome: str, lag_s: float | None) -> None: ...

    def redis_error(self, component: str) -> None: ...


class MirrorTicket:
    """The primary's side of one mirrored request."""

    def __init__(self) -> None:
        self._primary: asyncio.Future[StreamCapture] = asyncio.get_running_loop().create_future()

    def primary_ended(self, capture: StreamCapture) -> None:
        if not self._primary.done():
            self._primary.set_result(capture)

    async def primary(self) -> StreamCapture:
        return await asyncio.wait_for(asyncio.shield(self._primary), PRIMARY_WAIT_S)


class Mirror:
    def __init__(
        self,
        preprocess: PreprocessClient,
        pools: Mapping[str, PoolClient],
        sink: MirrorSink,
        observer: MirrorObserver,
        loads: PoolLoads = POOL_LOADS,
    ):
        """`loads`: the model replicas' load reports (in a Serve replica, this process's board)."""
        self._loads = loads
        self._preprocess = preprocess
        self._pools = pools
        self._sink = sink
        self._observer = observer
        self._tasks: set[asyncio.Task] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def start(self, request: ChatRequest, primary_pool: str, mirror: MirrorConfig) -> MirrorTicket | None:
        """Starts the copy; None when the cap is reached or the candidate is scaled to zero
        (the request is not mirrored)."""
        if len(self._tasks) >= mirror.max_in_flight:
            self._observer.mirror("skipped", None)
            return None
        if self._asleep(mirror.candidate):
            self._observer.mirror("skipped_scaled_to_zero", None)
            return None
        ticket = MirrorTicket()
        task = asyncio.get_running_loop().create_task(self._run(request, primary_pool, mirror, ticket))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ticket

    def _asleep(self, candidate: str) -> bool:
        """No replica of the candidate reports load while other pools' replicas do. A copy
        sent then would wait in the candidate's handle queue, and a request queued there wakes
        a pool scaled to zero (Serve's cold start): mirrored traffic must never do that. Where
        this process holds no load reports at all (no Serve routers: tests, start-up), nothing
        is skipped."""
        if self._loads.of(candidate):
            return False
        return any(self._loads.of(pool) for pool in self._pools if pool != candidate)

    async def close(self, grace_s: float = 5.0) -> None:
        """Lets copies in flight finish (each is bounded by its own deadline) for up to
        `grace_s`, cancels the rest, then closes the sink."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._sink.close()

    async def _run(self, request: ChatRequest, primary_pool: str, mirror: MirrorConfig, ticket: MirrorTicket) -> None:
        try:
            candidate = await self._call_candidate(request, mirror)
            primary = await ticket.primary()
            ended = time.monotonic()
            failed_before = self._sink.failed
            await self._sink.write(_record(request, primary_pool, primary, candidate, mirror.content))
            if self._sink.failed > failed_before:  # sinks count their failures instead of raising
                self._observer.mirror("record_failed", None)
                if isinstance(self._sink, RedisMirrorSink):
                    self._observer.redis_error("mirror")
                return
            outcome = "recorded" if candidate.status == "OK" else "candidate_failed"
            self._observer.mirror(outcome, time.monotonic() - ended)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("request %s: mirror record failed", request.request_id)
            self._observer.mirror("record_failed", None)

    async def _call_candidate(self, request: ChatRequest, mirror: MirrorConfig) -> StreamCapture:
        capture = StreamCapture(mirror.candidate, keep_text=True)  # digests need the text
        shadow = dataclasses.replace(request, request_id=f"{request.request_id}.mirror")
        try:
            async with asyncio.timeout(mirror.timeout_s):
                prepared = await self._preprocess.prepare(shadow, mirror.candidate)
                prepared = dataclasses.replace(
                    prepared, priority=MIRROR_PRIORITY, deadline_unix_s=time.time() + mirror.timeout_s
                )
                async for chunk in self._pools[mirror.candidate].generate(prepared):
                    capture.observe(chunk)
            capture.end("OK" if capture.finish else "UNAVAILABLE")
        except TimeoutError:
            capture.end("DEADLINE_EXCEEDED")
        except MuseError as e:
            capture.end(e.code.name)
        except Exception:
            logger.exception("request %s: mirror call to %s failed", request.request_id, mirror.candidate)
            capture.end("INTERNAL")
        return capture


def _record(
    request: ChatRequest, primary_pool: str, primary: StreamCapture, candidate: StreamCapture, content: str
) -> MirrorRecord:
    messages = [
        {"role": m.role.value, "text": m.text, "parts": len(m.parts), "name": m.name, "tool_call_id": m.tool_call_id}
        for m in request.messages
    ]
    if request.prompt is not None:  # a plain completion: its prompt, as one user turn
        text = (
            request.prompt.text
            if request.prompt.text is not None
            else " ".join(map(str, request.prompt.token_ids or ()))
        )
        messages = [{"role": "prompt", "text": text, "parts": 1, "name": "", "tool_call_id": ""}]
    record = MirrorRecord(
        request_id=request.request_id,
        tenant=request.identity.tenant,
        created_unix_s=time.time(),
        input_digest=messages_digest(messages),
        input=messages,
        primary=_side(primary, primary_pool),
        candidate=_side(candidate, candidate.pool),
        content=content,
    )
    return apply_content_policy(record, content)


def _side(capture: StreamCapture, pool: str) -> MirrorSide:
    text, reasoning = "".join(capture.text), "".join(capture.reasoning)
    usage = capture.usage
    return MirrorSide(
        pool=pool,
        status=capture.status or "CANCELLED",
        latency_s=capture.latency_s,
        ttft_s=capture.ttft_s,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else capture.generated_tokens,
        reasoning_tokens=usage.reasoning_tokens if usage else 0,
        finish=capture.finish,
        text=text,
        reasoning=reasoning,
        output_digest=sha256_hex(text) if capture.status == "OK" else "",
    )
