"""How long a new request would take to its first token on a model replica, from the
replica's last report: the wait before its prefill can start, and its own prefill. Pure
arithmetic: no clock, no I/O.

Two things hold a request back, and it waits for the longer:
- prefill: every prompt token ahead of it (what running requests still have to prefill, and
  what waiting requests of its priority or better hold), at the replica's measured prefill rate;
- a batch slot: when the slots left (after the requests it cannot preempt) are fewer than the
  requests ahead of it, or the KV cache is full with requests waiting, it starts only as
  requests finish, at the replica's measured finish rate.
Then one step more. Requests of worse priority than its own are not ahead of it: the engine
schedules by priority and, with `priority_preemption`, takes their slots beyond their
protected share. Its own prefill comes on top, at the same rate (its whole prompt: a cached
prefix makes it shorter).

The wait is never below what requests at its priority or better actually waited lately (the
replica's measured queue p90), so an estimate the model gets wrong corrects itself within
seconds. The wait is what load adds, and what admission bounds; the prefill is the request's own cost,
which no refusal would shorten. A wait that depends on a rate not measured yet is unknown
(`math.inf`) when the replica is already full; an idle replica that has measured nothing
waits for nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from museserve.messages import ReplicaLoad


@dataclass(frozen=True, slots=True)
class Ahead:
    """Requests this gateway sent that the report does not show yet (sent after it was taken)."""

    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Preemption:
    """The pool's engine settings that decide which running requests a priority may displace."""

    enabled: bool = False
    min_low_priority_share: float = 0.0

    def protected(self, max_running: int) -> int:
        """Slots requests of worse priority keep against preemption."""
        return max_running if not self.enabled else math.floor(self.min_low_priority_share * max_running)


@dataclass(frozen=True, slots=True)
class Estimate:
    wait_s: float  # until its prefill can start, and one step; math.inf: unknown yet
    prefill_s: float  # its own prompt's prefill

    @property
    def first_token_s(self) -> float:
        return self.wait_s + self.prefill_s


def first_token_estimate(
    load: ReplicaLoad,
    prompt_tokens: int,
    priority: int,
    preemption: Preemption,
    ahead: Ahead = Ahead(),
    kv_full: float = 1.0,
) -> Estimate:
    """For a request of `prompt_tokens` at `priority` sent to this replica now."""
    rate = load.prefill_tokens_per_s
    own_s = prompt_tokens / rate if rate > 0 else 0.0
    return Estimate(wait_s(load, priority, preemption, ahead, kv_full), own_s)


def wait_s(
    load: ReplicaLoad, priority: int, preemption: Preemption, ahead: Ahead = Ahead(), kv_full: float = 1.0
) -> float:
    """Seconds until a request at `priority` could start its prefill on this replica, plus one
    step; `math.inf` when that cannot be estimated yet. `kv_full`: a KV cache this full, with
    requests waiting, starts requests only as others end (the pool's `routing.kv_saturation`,
    the threshold its router passes such a replica over at)."""
    better = [c for c in load.by_priority if c.priority <= priority]
    worse = [c for c in load.by_priority if c.priority > priority]
    waiting_ahead = sum(c.waiting for c in better) + ahead.requests
    tokens_ahead = load.prefill_backlog_tokens + sum(c.waiting_tokens for c in better) + ahead.tokens

    backlog_s = 0.0
    if tokens_ahead > 0 and load.prefill_tokens_per_s > 0:
        backlog_s = tokens_ahead / load.prefill_tokens_per_s

    worse_running = sum(c.running for c in worse)
    occupied = sum(c.running for c in better) + min(worse_running, preemption.protected(load.max_running))
    free_slots = max(0, load.max_running - occupied) if load.max_running else math.inf
    kv_bound = load.kv_usage >= kv_full and load.waiting > 0
    must_wait_for = waiting_ahead + 1 if kv_bound else max(0, waiting_ahead + 1 - free_slots)

    slot_s = 0.0
    if must_wait_for > 0:
        if load.finishes_per_s <= 0:
            return math.inf
        slot_s = must_wait_for / load.finishes_per_s
    # What the requests at its priority or better met lately, measured: where the model above
    # misses (a core shared with another replica, steps slower than their mean), this does not.
    measured_s = max((c.queue_p90_s for c in better), default=0.0)
    return max(max(backlog_s, slot_s) + load.step_s, measured_s)
