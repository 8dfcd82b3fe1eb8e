"""The engine a model replica runs: continuous batching over a paged, prefix-cached KV pool.

One background task steps it: schedule -> execute and sample (the device thread) -> update
-> postprocess. Each request has its own async stream of chunks; leaving the stream (client
cancel, deadline, error) finishes the request at once and frees its blocks. A failed step
fails the requests in that step, never the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import torch

from museserve.config import MediaLimits, PoolConfig
from museserve.domain import PositionLogprobs
from museserve.engine.block_manager import BlockManager
from museserve.engine.constraint_factory import ConstraintFactory
from museserve.engine.loading import pool_executor
from museserve.engine.logits_processors import processors_for
from museserve.engine.media import check_request_media
from museserve.engine.model_runner import Executor
from museserve.engine.request_state import RequestState
from museserve.engine.sampler import make_generator
from museserve.engine.scheduler import Scheduler, SchedulerLimits, SchedulerPlan
from museserve.engine.sequence import Sequence
from museserve.engine.stats import EngineStats, RequestPhase
from museserve.engine.step_sampling import ActiveRequest, RowSampling, RowToken, collect, plan_sampling, sample_rows
from museserve.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    MuseError,
    ResourceExhausted,
    Unavailable,
)
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.metrics import InMemoryMetrics, MetricsRecorder
from museserve.preprocess.chat_format import ChatFormat

logger = logging.getLogger(__name__)


class MuseEngine:
    def __init__(
        self,
        pool: PoolConfig,
        chat_format: ChatFormat,
        executor: Executor | None = None,
        metrics: MetricsRecorder | None = None,
        media: MediaLimits | None = None,
    ):
        """`chat_format`: the pool's (`pool_model`): its tokenizer detokenizes, its markers say
        where reasoning ends, what stops a request and how calls are written.
        `media`: the preprocess tier's limits; a dummy model then gets projectors of their
        feature dims, a checkpoint's are checked against them. None: a text-only dummy model."""
        self.pool = pool
        self.metrics = metrics if metrics is not None else InMemoryMetrics()
        self.tokenizer = chat_format.tokenizer
        self.markers = chat_format.markers
        engine = pool.engine
        # The device thread: it builds the model and runs every step's tensor work (model and
        # sampling), so that no other thread of the engine enters torch's thread pool.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{pool.name}")
        if executor is None:
            try:
                executor = self._worker.submit(pool_executor, pool, self.tokenizer.vocab_size, media).result()
            except BaseException:
                self._worker.shutdown(wait=False)
                raise
        self.executor = executor
        # Executors of text-only models may not declare it.
        self.media_feature_dims: dict[str, int] = dict(getattr(executor, "media_feature_dims", {}))
        self.blocks = BlockManager(
            executor.num_blocks, engine.block_size, enable_prefix_caching=engine.enable_prefix_caching
        )
        limits = SchedulerLimits(
            max_running=engine.max_running_requests,
            max_waiting=engine.max_waiting_requests,
            max_batched_tokens=engine.max_batched_tokens,
            max_prefill_chunk=engine.max_prefill_chunk,
        )
        self.scheduler = Scheduler(limits, self.blocks)
        self.stats = EngineStats()
        self._active: dict[str, ActiveRequest] = {}
        self.constraints = ConstraintFactory(self.tokenizer, self.markers)
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    # -- requests -----------------------------------------------------------------------

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self._ensure_loop()
        reasoning = request.thinking_budget + 1 if request.thinking_budget else 0
        seq = Sequence(
            request.request_id,
            request.prompt_token_ids,
            cache_salt=request.tenant,
            priority=request.priority,
            max_num_tokens=request.num_prompt_tokens + reasoning + request.max_output_tokens,
            media=request.media,
        )
        check_request_media(request, self.media_feature_dims, self.pool.name)
        constraint = await self.constraints.build(request)  # compiles off the loop; InvalidArgument
        try:
            self.scheduler.add(seq)
        except ResourceExhausted:
            self.stats.num_rejected += 1
            raise
        active = ActiveRequest(
            request,
            RequestState(request, self.tokenizer, self.markers, shortened=constraint),
            self.stats.admit(request.request_id, request.tenant),
            make_generator(request.seed),
            processors_for(request, constraint),
        )
        self._active[request.request_id] = active
        self._wakeup.set()
        phase = RequestPhase.CANCELLED
        try:
            while True:
                item = await active.chunks.get()
                if isinstance(item, MuseError):
                    stopped = isinstance(item, (Cancelled, DeadlineExceeded))
                    phase = RequestPhase.CANCELLED if stopped else RequestPhase.FAILED
                    raise item
                if item.finish is not None:
                    phase = RequestPhase.FINISHED
                yield item
                if item.finish is not None:
                    return
        finally:
            self._finish(request.request_id, phase)

    def abort(self, request_id: str) -> None:
        """Ends a request now; its stream raises CANCELLED."""
        active = self._active.get(request_id)
        if active is not None:
            active.chunks.put_nowait(Cancelled("the request was cancelled"))
            self.scheduler.finish(request_id)

    def _finish(self, request_id: str, phase: RequestPhase) -> None:
        active = self._active.pop(request_id, None)
        self.scheduler.finish(request_id)
        if active is not None:
            self.stats.end(active.record, phase)
            reason = str(active.state.finish) if phase is RequestPhase.FINISHED else str(phase)
            self.metrics.ended(time.monotonic() - active.arrival, reason)
            logger.info(
                "request %s tenant=%s %s after %d tokens (%d prompt, %d cached)",
                request_id,
                active.request.tenant,
                phase,
                active.record.generated_tokens,
                active.request.num_prompt_tokens,
                active.state.num_cached_tokens,
            )

    # -- the stepping loop --------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())
            self._loop_task.add_done_callback(self._on_loop_end)

    def _on_loop_end(self, task: asyncio.Task) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error("the engine loop of pool %s failed", self.pool.name, exc_info=task.exception())
        for request_id in list(self._active):  # no stream may wait on a dead loop
            self._fail(request_id, Internal("the model replica's engine failed"))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.scheduler.has_work():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._expire_deadlines()
            plan = self.scheduler.schedule()
            if plan.is_empty:
                await asyncio.sleep(0.001)  # nothing fits right now; let finishes free blocks
                continue
            self._mark_started(plan)
            rows = plan_sampling(plan, self._active, self.scheduler)
            try:
                tokens = await loop.run_in_executor(self._worker, self._execute_and_sample, plan, rows)
            except Unavailable as exc:
                # The executor lost a worker: the KV cache is gone with it, so every running
                # sequence fails and no cached prefix may be reused; the executor rebuilds.
                logger.error("step of %d sequences failed: %s", len(plan.sequences), exc)
                lost = {item.request_id for item in plan.sequences} | {seq.request_id for seq in self.scheduler.running}
                for request_id in lost:
                    self._fail(request_id, Unavailable(exc.message, retry_after_s=exc.retry_after_s))
                self.blocks.drop_prefix_cache()
                continue
            except Exception:
                logger.exception("step of %d sequences failed", len(plan.sequences))
                for item in plan.sequences:
                    self._fail(item.request_id, Internal("the model step failed"))
                continue
            sampled = collect(rows, tokens, self._active, self.scheduler, self.tokenizer)
            self.scheduler.update(plan, {rid: token for rid, (token, _) in sampled.items()})
            self._postprocess(sampled)
            self.metrics.step(self.scheduler.num_running, self.scheduler.num_waiting, self.blocks.usage, len(sampled))

    def _mark_started(self, plan: SchedulerPlan) -> None:
        for item in plan.sequences:
            active = self._active.get(item.request_id)
            if active is not None and active.record.phase is RequestPhase.WAITING:
                self.stats.start(active.record)
                cached = self.scheduler.get(item.request_id).num_cached_tokens
                active.state.num_cached_tokens = cached
                queue_s = time.monotonic() - active.arrival
                self.metrics.scheduled_first(queue_s, active.request.num_prompt_tokens, cached)

    def _execute_and_sample(self, plan: SchedulerPlan, rows: list[RowSampling]) -> list[RowToken]:
        """On the device thread."""
        return self._sample(rows, self.executor.execute(plan))

    def _sample(self, rows: list[RowSampling], logits: torch.Tensor) -> list[RowToken]:
        return sample_rows(rows, logits)

    def _postprocess(self, sampled: dict[str, tuple[int, PositionLogprobs | None]]) -> None:
        now = time.monotonic()
        interval = self.pool.engine.stream_interval_ms / 1000
        context_length = self.pool.engine.context_length
        for request_id, (token, logprobs) in sampled.items():
            active = self._active[request_id]
            state = active.state
            state.append(token, logprobs)
            self.stats.count_tokens(active.record, 1)
            first = active.last_token_at is None
            self.metrics.token(now - (active.arrival if first else active.last_token_at), first)
            active.last_token_at = now
            if state.finish is None and state.num_tokens >= context_length:
                state.end_for_length()
            if state.finish is not None:
                self.scheduler.finish(request_id)  # blocks free now, not when the client reads
            if state.finish is not None or active.last_sent is None or now - active.last_sent >= interval:
                active.last_sent = now
                active.chunks.put_nowait(state.take_chunk())

    def _expire_deadlines(self) -> None:
        now = time.time()
        for request_id, active in list(self._active.items()):
            if now > active.request.deadline_unix_s:
                self._fail(request_id, DeadlineExceeded("the request ran past its deadline"))

    def _fail(self, request_id: str, error: MuseError) -> None:
        active = self._active.get(request_id)
        if active is not None:
            active.chunks.put_nowait(error)
        self.scheduler.finish(request_id)

    def shutdown(self, wait: bool = False) -> None:
        """`wait`: return only once the device thread has ended (after the step it is running)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._worker.shutdown(wait=wait, cancel_futures=True)
        self.constraints.close()
        close = getattr(self.executor, "shutdown", None)  # executors with workers of their own
        if close is not None:
            close()
