"""`DeviceRunner`: the engine's `StepRunner` in a model replica.

One thread, the device thread, builds the executor and runs every step on it: proposals
(with speculative decoding), the model, then sampling and verification, in submission order.
So a step planned while the previous one ran finds that step's tokens sampled when it starts,
and fills its `PENDING` ids with them (`resolve_pending`). No other thread of the replica
enters torch's thread pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from museserve.engine.plan import PENDING, Executor, RowSampling, RowToken, SchedulerPlan
from museserve.messages import PreparedRequest
from museserve.preprocess.chat_format import ChatFormat
from museserve.runner.prompt_scores import num_scored, score_prompts
from museserve.runner.proposer import Proposer, with_drafts
from museserve.runner.request_sampler import RequestSampler
from museserve.runner.sampling import sample_and_verify
from museserve.structured.constraint_factory import ConstraintFactory


class DeviceRunner:
    def __init__(
        self,
        build: Callable[[], Executor],
        chat_format: ChatFormat,
        name: str,
        proposer: Callable[[Executor], Proposer | None] | None = None,
    ):
        """`build` runs on the device thread: the executor's torch state belongs to it. So does
        `proposer`'s, built there from the executor (None: no speculative decoding)."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")

        def start() -> tuple[Executor, Proposer | None]:
            executor = build()
            return executor, proposer(executor) if proposer is not None else None

        try:
            self.executor, self.proposer = self._thread.submit(start).result()
        except BaseException:
            self._thread.shutdown(wait=False)
            raise
        self.num_blocks = self.executor.num_blocks
        # Executors of text-only models may not declare it.
        self.media_feature_dims: dict[str, int] = dict(getattr(self.executor, "media_feature_dims", {}))
        self.on_accelerator = bool(getattr(self.executor, "on_accelerator", False))
        self.kv_tier_slots = int(getattr(self.executor, "kv_tier_slots", 0))
        self.constraints = ConstraintFactory(chat_format.tokenizer, chat_format.markers)
        self._stop_ids = tuple(chat_format.markers.stop_ids)

    async def prepare(self, request: PreparedRequest) -> RequestSampler:
        constraint = await self.constraints.build(request)  # compiles off the loop; InvalidArgument
        return RequestSampler.for_request(request, constraint, self._stop_ids)

    async def call(self, fn: Callable[..., object], *args: object) -> object:
        """`fn(*args)` on the device thread, between steps."""
        return await asyncio.wrap_future(self._thread.submit(fn, *args))

    def submit(self, plan: SchedulerPlan, rows: list[RowSampling]) -> Future[list[RowToken]]:
        return self._thread.submit(self._step, plan, rows)

    def _step(self, plan: SchedulerPlan, rows: list[RowSampling]) -> list[RowToken]:
        plan = resolve_pending(plan, rows)
        proposals = self.proposer.propose(plan, rows) if self.proposer is not None else {}
        plan = with_drafts(plan, proposals)
        logits = self.executor.execute(plan)
        scored = num_scored(plan)
        sampling = logits.shape[0] - scored  # rows of the plan's sampling sequences come first
        tokens = sample_and_verify(plan, rows, logits[:sampling], proposals)
        return tokens + score_prompts(plan, logits[sampling:]) if scored else tokens

    def shutdown(self, wait: bool = False) -> None:
        """`wait`: return only once the device thread has ended (after the step it is running)."""
        self._thread.shutdown(wait=wait, cancel_futures=True)
        self.constraints.close()
        close = getattr(self.executor, "shutdown", None)  # executors with workers of their own
        if close is not None:
            close()


def resolve_pending(plan: SchedulerPlan, rows: list[RowSampling]) -> SchedulerPlan:
    """The plan with each PENDING id replaced by the token its request's previous step sampled.
    A PENDING id is only ever a sampling sequence's last token (the scheduler plans at most one
    step ahead), so its row is in `rows`."""
    if not any(item.token_ids[-1] == PENDING for item in plan.sequences):
        return plan
    last = {row.request_id: row.sampler.last_token for row in rows}
    resolved = tuple(
        dataclasses.replace(item, token_ids=(*item.token_ids[:-1], last[item.request_id]))
        if item.token_ids[-1] == PENDING
        else item
        for item in plan.sequences
    )
    return dataclasses.replace(plan, sequences=resolved)
