"""The engine a model replica runs: continuous batching over a paged, prefix-cached KV pool.

Policy only: no tensors. The device side (model, KV pool, sampling) is the injected
`StepRunner`. One background task steps it:

    plan N+1 -> submit it -> wait for step N -> update and emit step N's tokens

With overlap scheduling, step N+1 is planned and queued before step N's tokens are back, and
step N's tokens are detokenized and streamed while the device computes step N+1 (the runner
fills in the tokens N+1 decodes that N sampled). Without it, each step is planned after the
previous one ended. Outputs are the same token for token. `auto` overlaps where the model
runs on a GPU: on a CPU the loop's work takes cores from the model's, and measured no gain.

Each request has its own stream of chunks; leaving it (client cancel, deadline, error) ends
the request at once and frees its blocks. A failed step fails the requests in that step,
never the replica. A request still queued for its first token is ended before any prefill is
spent on it once its prefill, at the measured rate, could no longer start it before its
deadline or its tier's time-to-first-token objective (`_end_late_requests`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from museserve.config import PoolConfig
from museserve.engine.block_hashes import cache_salt
from museserve.engine.block_manager import BlockManager
from museserve.engine.kv_tier_index import TierIndex
from museserve.engine.late_requests import LateRequests
from museserve.engine.live import extend_prompt
from museserve.engine.load_meter import LoadMeter, prefill_tokens, replica_load
from museserve.engine.media import check_request_media
from museserve.engine.plan import AdapterLeases, RowSampling, RowToken, SchedulerPlan, StepRunner
from museserve.engine.request import Request, position_logprobs
from museserve.engine.request_state import RequestState
from museserve.engine.scheduler import Scheduler, SchedulerLimits
from museserve.engine.sequence import Sequence, SequenceStatus
from museserve.engine.speculation import Speculation
from museserve.engine.stats import EngineStats, RequestPhase
from museserve.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    MuseError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from museserve.messages import GenerationChunk, MediaSegment, PreparedRequest, ReplicaLoad
from museserve.metrics import InMemoryMetrics, MetricsRecorder
from museserve.preprocess.chat_format import ChatFormat

logger = logging.getLogger(__name__)


@dataclass
class Step:
    plan: SchedulerPlan
    requests: list[Request]  # plan.sequences' requests, in plan order
    rows: list[RowSampling]
    tokens: asyncio.Future[list[RowToken]]
    submitted_at: float  # time.monotonic()


class MuseEngine:
    def __init__(
        self,
        pool: PoolConfig,
        chat_format: ChatFormat,
        runner: StepRunner,
        metrics: MetricsRecorder | None = None,
        *,
        context_window: int,
        adapters: AdapterLeases | None = None,
    ):
        """`chat_format`: the pool's (`pool_model`): its tokenizer detokenizes, its markers say
        where reasoning ends, what stops a request and how calls are written. `runner`: the
        device side (`runner.build_engine` makes both). `context_window`: the pool's
        (`config.context_window`, what the preprocess tier checked against). `adapters`: the
        replica's LoRA adapters (`pool.lora`), None where the pool serves none."""
        self.pool = pool
        self.runner = runner
        self.adapters = adapters
        engine = pool.engine
        self.context_window = context_window
        self.metrics = metrics if metrics is not None else InMemoryMetrics()
        self.tokenizer = chat_format.tokenizer
        self.markers = chat_format.markers
        tier_slots = getattr(runner, "kv_tier_slots", 0)  # the runner's tier storage sets the index's size
        self.blocks = BlockManager(
            runner.num_blocks,
            engine.block_size,
            enable_prefix_caching=engine.enable_prefix_caching,
            tier=TierIndex(tier_slots) if tier_slots else None,
        )
        self._tier_hits_reported = 0  # blocks.tier_hits already passed to the metrics
        limits = SchedulerLimits(
            max_running=engine.max_running_requests,
            max_waiting=engine.max_waiting_requests,
            max_batched_tokens=engine.max_batched_tokens,
            max_prefill_chunk=engine.max_prefill_chunk,
            max_prefill_attention=engine.max_prefill_attention,
            min_prefill_chunk=engine.block_size,
            priority_preemption=engine.priority_preemption,
            min_low_priority_share=engine.min_low_priority_share,
            max_speculating_batch=engine.speculative.batch_limit(runner.on_accelerator),
        )
        self.scheduler = Scheduler(limits, self.blocks)
        self._priority_preemptions_reported = 0  # scheduler.num_priority_preemptions already passed on
        self.stats = EngineStats()
        self.meter = LoadMeter()
        self.late = LateRequests(self.scheduler, self.meter)
        self._last_step_back = 0.0  # time.monotonic() when the last step's tokens came back
        self.requests: dict[str, Request] = {}
        # Speculation verifies, in each step, what the previous step accepted: no overlap with it.
        self.overlap = not engine.speculative.enabled and (
            engine.overlap_scheduling == "on" or (engine.overlap_scheduling == "auto" and runner.on_accelerator)
        )
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None

    # -- requests -----------------------------------------------------------------------

    async def generate(self, prepared: PreparedRequest, *, live: bool = False) -> AsyncIterator[GenerationChunk]:
        """`live`: the prompt stays open for `extend` (speech still arriving); the stream then
        starts with an empty chunk once the request is admitted, after which `extend` finds it."""
        self._ensure_loop()
        self._check_id_free(prepared.request_id)
        check_request_media(prepared, self.runner.media_feature_dims, self.pool.name)
        sampler = await self.runner.prepare(prepared)  # compiles a grammar off the loop; InvalidArgument
        lora_slot = await self._acquire_adapter(prepared)
        try:
            request = self._admit(prepared, sampler, lora_slot, live=live)
        except BaseException:
            self._release_adapter(lora_slot)
            raise
        try:
            if live:
                yield GenerationChunk()
            while True:
                item = await request.chunks.get()
                if isinstance(item, MuseError):
                    raise item
                yield item
                if item.finish is not None:
                    return
        finally:
            if not request.ended and request.record.phase is RequestPhase.WAITING:
                self._drop(request, "client_gone")  # left before it started
            self._finish(request, RequestPhase.CANCELLED)  # a client that left; no-op once ended
            self._release_adapter(lora_slot)

    async def _acquire_adapter(self, prepared: PreparedRequest) -> int:
        """The slot of the request's adapter, held until `_release_adapter`; -1 for none."""
        if not prepared.adapter:
            return -1
        if self.adapters is None:
            raise NotFound(f"model {self.pool.name} has no adapter {prepared.adapter!r}", field="adapter")
        return await self.adapters.acquire(prepared.adapter)

    def _release_adapter(self, lora_slot: int) -> None:
        if lora_slot >= 0 and self.adapters is not None:
            self.adapters.release(lora_slot)

    def _check_id_free(self, request_id: str) -> None:
        if request_id in self.requests:
            raise InvalidArgument(f"request id {request_id!r} is already in use", field="request_id")

    async def extend(
        self, request_id: str, token_ids: list[int], media: tuple[MediaSegment, ...] = (), *, close: bool = False
    ) -> None:
        """More prompt for a live request (`generate(live=True)`); `media` starts are relative to
        the first new token. `close`: the prompt is whole and the answer starts; the request's
        time to first token counts from here."""
        request = self.requests.get(request_id)
        if request is None:
            raise NotFound(f"no live request {request_id!r} on this replica (it ended)", field="request_id")
        capacity = self.blocks.num_blocks * self.blocks.block_size
        extend_prompt(request, token_ids, media, close=close, context_window=self.context_window,
                      capacity_tokens=capacity, feature_dims=self.runner.media_feature_dims)  # fmt: skip
        if close:
            request.arrival = time.monotonic()
        self._wakeup.set()

    def _admit(self, prepared: PreparedRequest, sampler: object, lora_slot: int = -1, *, live: bool = False) -> Request:
        self._check_id_free(prepared.request_id)  # again: another may have come during `prepare`
        if live and (prepared.num_prompt_tokens < 2 or prepared.sampling.prompt_logprobs is not None):
            raise InvalidArgument("a live request needs a prompt of 2+ tokens and no prompt logprobs", field="messages")
        if prepared.num_prompt_tokens >= self.context_window:  # the preprocess tier refuses these first
            raise InvalidArgument(
                f"the prompt is {prepared.num_prompt_tokens} tokens; model {self.pool.name} reads at most "
                f"{self.context_window - 1} prompt tokens (context window of {self.context_window})",
                field="messages",
            )
        reasoning = prepared.thinking_budget + 1 if prepared.thinking_budget else 0
        seq = Sequence(
            prepared.request_id,
            prepared.prompt_token_ids,
            cache_salt=cache_salt(prepared.tenant, prepared.adapter),
            lora_slot=lora_slot,
            priority=prepared.priority,
            max_num_tokens=min(
                prepared.num_prompt_tokens + reasoning + prepared.max_output_tokens,
                self.context_window,
            ),
            media=prepared.media,
            prompt_logprobs=prepared.sampling.prompt_logprobs,
            speculation=None if live else self._speculation(prepared),
            prompt_open=live,
        )
        try:
            self.scheduler.add(seq)
        except ResourceExhausted:
            self.stats.num_rejected += 1
            raise
        output = RequestState(prepared, self.tokenizer, self.markers)
        request = Request(prepared, seq, output, sampler, self.stats.admit(prepared.request_id, prepared.tenant))
        self.requests[prepared.request_id] = request
        self._wakeup.set()
        return request

    def _speculation(self, prepared: PreparedRequest) -> Speculation | None:
        spec = self.pool.engine.speculative
        if not spec.enabled or not prepared.sampling.speculative:
            return None
        # Until the reasoning close marker: proposals stop short of the forced one at the budget.
        cap = prepared.thinking_budget - 1 if prepared.thinking_budget else None
        return Speculation(spec.num_speculative_tokens, spec.min_acceptance, cap=cap)

    def abort(self, request_id: str) -> None:
        """Ends a request now; its stream raises CANCELLED."""
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, RequestPhase.CANCELLED, Cancelled("the request was cancelled"))

    def _finish(self, request: Request, phase: RequestPhase, error: MuseError | None = None) -> None:
        """The one way a request ends: its blocks freed, its stats settled, its stream closed
        (by the final chunk already queued, or by `error`)."""
        if request.ended:
            return
        request.ended = True
        del self.requests[request.request_id]
        self.scheduler.remove(request.seq)
        if request.record.phase is RequestPhase.RUNNING:
            self.meter.finished()  # it left the running batch
        self.stats.end(request.record, phase)
        reason = str(request.output.finish) if phase is RequestPhase.FINISHED else str(phase)
        self.metrics.ended(time.monotonic() - request.arrival, reason)
        if request.prepared.adapter and self.adapters is not None:
            self.adapters.served(
                request.prepared.adapter, request.prepared.num_prompt_tokens, request.record.generated_tokens
            )
        if error is not None:
            request.chunks.put_nowait(error)
        logger.info(
            "request %s tenant=%s %s after %d tokens (%d prompt, %d cached)",
            request.request_id,
            request.prepared.tenant,
            phase,
            request.record.generated_tokens,
            request.prepared.num_prompt_tokens,
            request.seq.num_cached_tokens,
        )

    def _fail(self, request: Request, error: MuseError) -> None:
        stopped = isinstance(error, (Cancelled, DeadlineExceeded))
        self._finish(request, RequestPhase.CANCELLED if stopped else RequestPhase.FAILED, error)

    def _drop(self, request: Request, reason: str, error: MuseError | None = None) -> None:
        """Ends a request that has not started (or, preempted, not yet streamed), counted by reason."""
        self.metrics.dropped(reason)
        self.stats.num_dropped += 1
        logger.info(
            "request %s tenant=%s dropped before its first token: %s",
            request.request_id,
            request.prepared.tenant,
            reason,
        )
        if error is None:
            self._finish(request, RequestPhase.CANCELLED)
        else:
            self._fail(request, error)

    def load(self) -> ReplicaLoad:
        """The replica's load now, for routing and admission; cheap enough to call every second."""
        load = replica_load(self.scheduler, self.blocks.usage, self.meter)
        if self.adapters is None:
            return load
        return dataclasses.replace(load, adapters=tuple(self.adapters.resident()))

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
        for request in list(self.requests.values()):  # no stream may wait on a dead loop
            self._fail(request, Internal("the model replica's engine failed"))

    async def _run(self) -> None:
        overlap = self.overlap
        in_flight: Step | None = None
        while True:
            if in_flight is None and not self.scheduler.has_work():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._end_late_requests()
            step = self._launch() if in_flight is None or overlap else None
            if in_flight is not None:
                await self._complete(in_flight)
            elif step is None:
                await asyncio.sleep(0.001)  # nothing fits right now; let finishes free blocks
            in_flight = step

    def _launch(self) -> Step | None:
        """Plans the next step and queues it on the device."""
        plan = self.scheduler.schedule()
        if plan.preempted:
            self._report_preemptions(len(plan.preempted))
        if plan.is_empty:
            return None
        if plan.kv_saves or plan.kv_loads:  # a tier hit always loads: its tokens are counted here
            self.metrics.kv_tier(
                self.blocks.tier_hits - self._tier_hits_reported, len(plan.kv_saves), len(plan.kv_loads)
            )
            self._tier_hits_reported = self.blocks.tier_hits
        requests = [self.requests[item.request_id] for item in plan.sequences]
        rows = []
        for item, request in zip(plan.sequences, requests, strict=True):
            if request.record.phase is RequestPhase.WAITING:
                self.stats.start(request.record)
                queue_s = time.monotonic() - request.arrival
                self.metrics.scheduled_first(queue_s, request.prepared.num_prompt_tokens, request.seq.num_cached_tokens)
                self.meter.started(request.seq.priority, queue_s)
            if item.samples:
                rows.append(request.row(len(rows)))
        submitted = asyncio.wrap_future(self.runner.submit(plan, rows))
        return Step(plan, requests, rows, submitted, time.monotonic())

    def _report_preemptions(self, count: int) -> None:
        for_priority = self.scheduler.num_priority_preemptions - self._priority_preemptions_reported
        self._priority_preemptions_reported = self.scheduler.num_priority_preemptions
        for reason, n in (("priority", for_priority), ("kv", count - for_priority)):
            if n:
                self.metrics.preempted(reason, n)

    async def _complete(self, step: Step) -> None:
        """Waits for a step's tokens, then hands each to its request."""
        try:
            tokens = await step.tokens
        except Unavailable as exc:
            # The executor lost a worker: the KV cache is gone with it, so every running
            # sequence fails and no cached prefix may be reused; the executor rebuilds.
            logger.error("step of %d sequences failed: %s", len(step.requests), exc)
            running = [r for r in self.requests.values() if r.seq.status is SequenceStatus.RUNNING]
            for request in (*step.requests, *running):
                self._fail(request, Unavailable(exc.message, retry_after_s=exc.retry_after_s))
            self.blocks.drop_prefix_cache()
            return
        except Exception:
            logger.exception("step of %d sequences failed", len(step.requests))
            for request in step.requests:
                self._fail(request, Internal("the model step failed"))
            return
        now = time.monotonic()
        # Steps run one after another on the device: a step queued behind another starts when that one ends.
        self.meter.step(
            now - max(step.submitted_at, self._last_step_back), prefill_tokens(step.plan), step.plan.num_batched_tokens
        )
        self._last_step_back = now
        scores = iter(tokens[len(step.rows) :])  # scored prompt positions, in plan order
        sampled = {row.request_id: token for row, token in zip(step.rows, tokens[: len(step.rows)], strict=True)}
        generated = 0
        for item, request in zip(step.plan.sequences, step.requests, strict=True):
            positions = [next(scores) for _ in item.prompt_targets]
            if request.ended:
                continue  # ended while the step ran: its token is dropped
            if positions:
                self._scored(request, item.first_position + item.targets_from, positions)
            token = sampled.get(item.request_id)
            if token is None:
                self.scheduler.update(request.seq, item, None)
                continue
            accepted = [t.token for t in token.accepted]
            self.scheduler.update(request.seq, item, token.token, accepted)
            if token.num_proposed:
                self._speculated(request, token.num_proposed, len(accepted))
            for each in (*token.accepted, token):
                self._emit(request, each, now)
                generated += 1
                if request.ended:
                    break  # a stop, an end token or a budget: later accepted tokens are dropped
        self.metrics.step(self.scheduler.num_running, self.scheduler.num_waiting, self.blocks.usage, generated)

    def _speculated(self, request: Request, proposed: int, accepted: int) -> None:
        """A step verified `proposed` tokens of the request, accepting `accepted` of them."""
        self.metrics.speculated(proposed, accepted)
        speculation = request.seq.speculation
        if speculation is not None:
            speculation.record(proposed, accepted)

    def _scored(self, request: Request, first: int, positions: list[RowToken]) -> None:
        """Prompt positions first .. first + len - 1 scored: each the next prompt token's logprob."""
        seq = request.seq
        if first == seq.num_scored_positions:  # in order; a recompute after preemption scores nothing twice
            request.output.add_prompt_logprobs([position_logprobs(self.tokenizer, p) for p in positions])
            seq.num_scored_positions += len(positions)

    def _emit(self, request: Request, token: RowToken, now: float) -> None:
        """One sampled token into the request's output; a chunk goes out at the stream interval."""
        output = request.output
        logprobs = position_logprobs(self.tokenizer, token) if token.logprob is not None else None
        output.append(token.token, logprobs, steered=token.steered)
        self.stats.count_tokens(request.record, 1)
        first = request.last_token_at is None
        self.metrics.token(now - (request.arrival if first else request.last_token_at), first)
        if first:
            self.meter.first_token(now - request.arrival)
        request.last_token_at = now
        if output.finish is None and output.num_tokens >= self.context_window:
            output.end_for_length()
        if request.seq.speculation is not None:
            request.seq.speculation.cap = output.tokens_before_forced()
        interval = self.pool.engine.stream_interval_ms / 1000
        if output.finish is not None or request.last_sent is None or now - request.last_sent >= interval:
            request.last_sent = now
            request.chunks.put_nowait(request.take_chunk())
        if output.finish is not None:
            self._finish(request, RequestPhase.FINISHED)  # blocks free now, not when the client reads

    def _end_late_requests(self) -> None:
        """Before each plan: requests that can no longer be served in time end now (`late_requests`)."""
        for request, error, reason in self.late.find(self.requests.values(), time.time()):
            if reason is None:
                self._fail(request, error)
            else:
                self._drop(request, reason, error)

    def shutdown(self, wait: bool = False) -> None:
        """`wait`: return only once the device thread has ended (after the step it is running)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
        self.runner.shutdown(wait=wait)
