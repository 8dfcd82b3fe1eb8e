"""A `Scheduler` that also finds its sequences by request id, as tests that drive it without an
engine need (the engine keeps that index in its `Request` records)."""

from __future__ import annotations

from museserve.engine.plan import SchedulerPlan
from museserve.engine.scheduler import Scheduler
from museserve.engine.sequence import Sequence


class IndexedScheduler(Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._by_id: dict[str, Sequence] = {}

    def add(self, seq: Sequence) -> None:
        super().add(seq)
        self._by_id[seq.request_id] = seq

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    def finish(self, request_id: str) -> Sequence | None:
        seq = self._by_id.pop(request_id, None)
        if seq is not None:
            self.remove(seq)
        return seq

    def update_plan(self, plan: SchedulerPlan, sampled: dict[str, int]) -> None:
        """`update` for every sequence of a plan that ran: `sampled` maps request id -> token."""
        for item in plan.sequences:
            seq = self._by_id.get(item.request_id)
            if seq is not None:
                self.update(seq, item, sampled.get(item.request_id))
