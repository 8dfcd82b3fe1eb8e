"""Decides each step which sequences run and how many tokens each computes. No tensors.

One step has a token budget. Running sequences come first, in priority order: a decode
takes one token, an unfinished prefill takes the next chunk. When blocks run out, the
lowest-priority running sequence is preempted (its blocks freed, recomputed later from
the prefix cache where it survives). Waiting sequences are admitted in (priority,
arrival) order while budget, blocks and the running cap allow; the first that does not
fit stops admission, so a large prompt is not starved by small ones behind it.

A live sequence (`Sequence.prompt_open`) runs like a chunked prefill of the prompt it has so
far and then sits in the batch, holding its blocks, planned only when its prompt grows.

With priority preemption, a waiting head of a better priority than the lowest running
sequence that cannot start (batch full, or its first chunk's blocks do not fit) preempts
running sequences of worse priority, lowest first, until it fits, and starts in the same
step. Worse priorities keep `min_low_priority_share` of the batch against it.

The scheduler holds sequences, not requests: the engine's `Request` owns its `Sequence`,
adds it, removes it when the request ends, and reports what each step computed (`update`).
A step may be planned while the previous one runs: a sequence that samples in a plan counts
that token as pending at once, so the next plan decodes it (as `PENDING`) without waiting.

Speculation (`engine.speculation`): a sequence that samples in a small enough step may also get
slots for proposed tokens, within the step's budget and only where free blocks hold them (a
proposal never preempts). The plan says how many (`num_speculative`); the step reports which
were accepted (`update`), and the rejected ones' slots are rolled back: the computed count stops
after the accepted tokens, and blocks past the sequence's tokens are freed. Speculation needs
each step planned after the previous one came back: the engine turns overlap off for it.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from museserve.engine.block_manager import BlockManager
from museserve.engine.media import step_slices
from museserve.engine.plan import PENDING, ScheduledSequence, SchedulerPlan
from museserve.engine.sequence import Sequence, SequenceStatus
from museserve.errors import InvalidArgument, ResourceExhausted


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    max_running: int  # sequences in one batch
    max_waiting: int  # queued beyond the running ones; more: RESOURCE_EXHAUSTED
    max_batched_tokens: int  # token budget of one step (prefill chunks + decodes)
    max_prefill_chunk: int  # most prompt tokens one sequence computes in one step
    # While other sequences run: most (new token x earlier position) pairs one prefill chunk
    # attends in a step. A chunk deep into a long prompt shrinks to fit (to no less than
    # `min_prefill_chunk`), so a huge prefill takes a fair share of each step, not all of it.
    max_prefill_attention: int = 1 << 62
    min_prefill_chunk: int = 16
    priority_preemption: bool = False  # a better-priority head preempts worse running sequences
    # Of max_running, the share (floored) that sequences of worse priority than the head keep.
    min_low_priority_share: float = 0.0
    # Speculation: a step with at most this many running sequences reserves proposal slots for
    # the ones that sample and speculate (`Sequence.speculation`); beyond, decode is compute-bound.
    max_speculating_batch: int = 0


class Scheduler:
    def __init__(self, limits: SchedulerLimits, blocks: BlockManager):
        self.limits = limits
        self.blocks = blocks
        self.running: list[Sequence] = []  # kept in sort_key order
        self._waiting: list[tuple[tuple[int, int], Sequence]] = []  # heap by sort_key
        self._arrivals = itertools.count()
        self.num_priority_preemptions = 0  # since start: of all preemptions, those for a better head

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_work(self) -> bool:
        return bool(self.running or self._waiting)

    def waiting_sequences(self) -> Iterator[Sequence]:
        """The waiting sequences, in no particular order."""
        return (seq for _, seq in self._waiting)

    def tokens_to_compute(self, seq: Sequence) -> int:
        """Tokens a waiting sequence would compute if admitted now: those past the prefix the
        device cache or its tier holds."""
        return self._first_chunk(seq, seq.num_tokens)[2]

    def add(self, seq: Sequence) -> None:
        # A sequence that could outgrow the whole cache would preempt itself forever.
        if self.blocks.blocks_for(seq.max_num_tokens) > self.blocks.num_blocks:
            capacity = self.blocks.num_blocks * self.blocks.block_size
            raise InvalidArgument(
                f"prompt and output need {seq.max_num_tokens} tokens of KV cache; this replica holds {capacity}",
                field="sampling.max_output_tokens" if seq.num_tokens < capacity else "messages",
            )
        if len(self._waiting) >= self.limits.max_waiting:
            raise ResourceExhausted("the model replica's queue is full", retry_after_s=1.0)
        seq.arrival = next(self._arrivals)
        self._push_waiting(seq)

    def remove(self, seq: Sequence) -> None:
        """Takes a sequence out (finished, aborted or failed) and frees its blocks at once."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        else:
            self._waiting = [(k, s) for k, s in self._waiting if s is not seq]
            heapq.heapify(self._waiting)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> SchedulerPlan:
        budget = self.limits.max_batched_tokens
        planned: list[tuple[Sequence, int, int]] = []  # (sequence, tokens computed, proposal slots)
        preempted = self._preempt_for_head() if self.limits.priority_preemption else []
        grew_by_preempting = False  # a running sequence needed blocks: admitting more would thrash
        speculate = len(self.running) <= self.limits.max_speculating_batch

        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING or budget == 0:
                continue  # preempted earlier in this pass, or the budget is spent
            num_new = self._next_chunk(seq, budget)
            if num_new == 0:
                continue
            while not self.blocks.can_grow(seq, num_new):
                # The lowest-priority running sequence: `seq` itself or one not planned yet.
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                grew_by_preempting = True
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self.blocks.grow(seq, num_new)
                spec = self._speculative_slots(seq, num_new, budget - num_new) if speculate else 0
                planned.append((seq, num_new, spec))
                budget -= num_new + spec

        while self._waiting and budget > 0 and len(self.running) < self.limits.max_running and not grew_by_preempting:
            seq = self._waiting[0][1]
            if seq.num_pending:
                break  # preempted while its last step ran: its tokens are not all known yet
            cached, from_tier, num_new = self._first_chunk(seq, min(budget, self.limits.max_prefill_chunk))
            if not self.blocks.can_admit(seq, cached, num_new, from_tier):
                break
            heapq.heappop(self._waiting)
            self.blocks.admit(seq, cached, num_new, from_tier)
            seq.status = SequenceStatus.RUNNING
            self._insert_running(seq)
            spec = self._speculative_slots(seq, num_new, budget - num_new) if speculate else 0
            planned.append((seq, num_new, spec))
            budget -= num_new + spec

        # Tier copies are recorded only where a sequence is planned (grow, admit), so they always
        # ride on a plan that runs; an empty plan is never submitted.
        saves, loads = self.blocks.take_transfers() if planned else ((), ())
        sequences = tuple(self._scheduled(seq, n, spec) for seq, n, spec in planned)
        return SchedulerPlan(sequences, tuple(preempted), kv_saves=saves, kv_loads=loads)

    def _first_chunk(self, seq: Sequence, budget: int) -> tuple[list[int], list[int], int]:
        """What admitting `seq` now takes: its device-cached prefix blocks, the tier slots after
        them (loaded by this plan, before its step) and the tokens it computes now: what it
        has past them, at most `budget`."""
        cached = self.blocks.cached_prefix(seq)
        from_tier = self.blocks.tier_prefix(seq, len(cached))
        cached_tokens = (len(cached) + len(from_tier)) * self.blocks.block_size
        return cached, from_tier, min(seq.num_computable_tokens - cached_tokens, budget)

    def _preempt_for_head(self) -> list[str]:
        """Preempts running sequences of worse priority than the waiting head, lowest first, while
        the head cannot start and those sequences number more than their kept share."""
        if not self._waiting:
            return []
        head = self._waiting[0][1]
        if head.num_pending:
            return []  # it cannot be admitted this step anyway
        limits = self.limits
        kept = math.floor(limits.min_low_priority_share * limits.max_running)
        worse = sum(1 for seq in self.running if seq.priority > head.priority)
        preempted: list[str] = []
        chunk: tuple[list[int], list[int], int] | None = None  # looked up only when the batch has room
        # `running` is in sort_key order: while any sequence is worse than the head, the last one is.
        while worse > kept:
            if len(self.running) < limits.max_running:
                chunk = chunk or self._first_chunk(head, min(limits.max_batched_tokens, limits.max_prefill_chunk))
                cached, from_tier, num_new = chunk
                if self.blocks.can_admit(head, cached, num_new, from_tier):
                    break
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            worse -= 1
        self.num_priority_preemptions += len(preempted)
        return preempted

    def _next_chunk(self, seq: Sequence, budget: int) -> int:
        if seq.num_pending and seq.num_tokens >= seq.max_num_tokens:
            return 0  # the pending token is its last: computing it would sample past the end
        remaining = seq.num_computable_tokens - seq.num_computed_tokens
        if remaining > 1 or seq.prompt_open:  # still in prefill (a decode has exactly one uncomputed token)
            remaining = min(remaining, self._prefill_chunk(seq))
        return min(remaining, budget)

    def _prefill_chunk(self, seq: Sequence) -> int:
        limits = self.limits
        if len(self.running) < 2 or seq.num_computed_tokens == 0:
            return limits.max_prefill_chunk  # alone, or at the start: the whole chunk
        fair = limits.max_prefill_attention // seq.num_computed_tokens
        return max(min(limits.min_prefill_chunk, limits.max_prefill_chunk), min(fair, limits.max_prefill_chunk))

    def _speculative_slots(self, seq: Sequence, num_new: int, budget: int) -> int:
        """Proposal slots for `seq` this step, its blocks grown to hold them: none unless the step
        samples it, it speculates, and budget, its token cap and free blocks allow."""
        if seq.speculation is None or seq.num_computed_tokens + num_new != seq.num_tokens or seq.num_pending:
            return 0
        room = seq.max_num_tokens - seq.num_tokens - 1  # the step yields up to 1 + slots tokens
        slots = min(seq.speculation.lookahead(), budget, room)
        if slots <= 0:
            return 0
        blocks = self.blocks
        extra = blocks.blocks_for(seq.num_computed_tokens + num_new + slots) - len(seq.block_ids)
        if extra > 0 and blocks.num_free_blocks - extra < len(self.running):
            return 0  # keep a block per running sequence: a proposal must never cause a preemption
        blocks.grow(seq, num_new + slots)
        return slots

    def _scheduled(self, seq: Sequence, num_new: int, num_speculative: int = 0) -> ScheduledSequence:
        """The step's share of `seq`; from here on its computed tokens include the step's (not
        the proposal slots: `update` adds the accepted ones)."""
        first = seq.num_computed_tokens
        known = seq.token_ids[first : first + num_new]
        item = ScheduledSequence(
            seq.request_id,
            first,
            (*known, *[PENDING] * (num_new - len(known))),
            tuple(seq.block_ids),
            samples=first + num_new == seq.num_tokens,
            media=step_slices(seq.media, first, num_new) if seq.media else (),
            num_speculative=num_speculative,
            lora_slot=seq.lora_slot,
            **_prompt_targets(seq, first, num_new),
        )
        seq.num_computed_tokens = first + num_new
        seq.num_pending += item.samples
        return item

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self._push_waiting(seq)

    def _push_waiting(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        heapq.heappush(self._waiting, (seq.sort_key, seq))

    def _insert_running(self, seq: Sequence) -> None:
        index = len(self.running)
        while index > 0 and self.running[index - 1].sort_key > seq.sort_key:
            index -= 1
        self.running.insert(index, seq)

    def update(self, seq: Sequence, item: ScheduledSequence, token: int | None, accepted: Seq[int] = ()) -> None:
        """After the step ran: `token` is what it sampled for `seq` (None when the step only
        prefilled), after the `accepted` proposed tokens. A finished sequence is skipped; a
        preempted one keeps its tokens."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if item.samples and token is not None:
            for accepted_token in accepted:
                seq.append_token(accepted_token)
            seq.append_token(token)
        written = item.first_position + item.num_new_tokens
        if seq.status is SequenceStatus.RUNNING:
            if item.num_speculative:
                # Accepted proposals' KV was written by the step; the rejected ones' slots roll back.
                seq.num_computed_tokens += len(accepted)
                written += len(accepted)
                self.blocks.release_tail(seq)
            self.blocks.cache_computed_blocks(seq, written)


def _prompt_targets(seq: Sequence, first: int, num_new: int) -> dict[str, object]:
    """For a sequence that scores its prompt: the prompt token that follows each of the step's
    first positions (position p predicts token p + 1), from the first one not scored yet."""
    if seq.prompt_logprobs is None or first + num_new <= seq.num_scored_positions:
        return {}
    start = max(first, seq.num_scored_positions)
    end = min(first + num_new, seq.num_prompt_tokens - 1)  # the last prompt position predicts an output
    if start >= end:
        return {}
    return {"prompt_targets": tuple(seq.token_ids[start + 1 : end + 1]), "targets_from": start - first,
            "prompt_top": seq.prompt_logprobs}  # fmt: skip
