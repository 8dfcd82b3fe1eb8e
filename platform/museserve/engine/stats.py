"""Counters a model replica keeps about its requests, for metrics and for tests that
observe the replica itself (did a cancelled request really stop generating?)."""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field, fields

RECENT_REQUESTS = 512


class RequestPhase(enum.StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass
class RequestRecord:
    request_id: str
    tenant: str
    phase: RequestPhase = RequestPhase.WAITING
    generated_tokens: int = 0


@dataclass
class EngineStats:
    num_waiting: int = 0
    num_running: int = 0
    num_finished: int = 0
    num_cancelled: int = 0
    num_failed: int = 0
    num_rejected: int = 0  # refused at arrival: the queue was full
    num_dropped: int = 0  # ended before their first token (counted as cancelled or failed too)
    generated_tokens: int = 0
    recent: OrderedDict[str, RequestRecord] = field(default_factory=OrderedDict)

    def admit(self, request_id: str, tenant: str) -> RequestRecord:
        record = RequestRecord(request_id, tenant)
        self.recent[request_id] = record
        if len(self.recent) > RECENT_REQUESTS:
            self.recent.popitem(last=False)
        self.num_waiting += 1
        return record

    def start(self, record: RequestRecord) -> None:
        self.num_waiting -= 1
        self.num_running += 1
        record.phase = RequestPhase.RUNNING

    def count_tokens(self, record: RequestRecord, n: int) -> None:
        record.generated_tokens += n
        self.generated_tokens += n

    def end(self, record: RequestRecord, phase: RequestPhase) -> None:
        if record.phase is RequestPhase.RUNNING:
            self.num_running -= 1
        elif record.phase is RequestPhase.WAITING:
            self.num_waiting -= 1
        record.phase = phase
        if phase is RequestPhase.FINISHED:
            self.num_finished += 1
        elif phase is RequestPhase.CANCELLED:
            self.num_cancelled += 1
        else:
            self.num_failed += 1

    def snapshot(self) -> dict:
        out: dict = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "recent"}
        out["recent"] = {
            rid: {"phase": str(r.phase), "generated_tokens": r.generated_tokens} for rid, r in self.recent.items()
        }
        return out
