"""One request as the engine holds it, from `MuseEngine.generate` until it ends.

The record owns everything about the request: its `Sequence` (what the scheduler and the
block manager see), its output state (text, reasoning, calls; `RequestState`), the runner's
sampler (generator, penalties, grammar), its stats record and the stream its chunks go to.
The engine keeps one index of them (`MuseEngine.requests`) and ends each through one path
(`MuseEngine._finish`), which frees its blocks, settles its stats and closes its stream.
"""

from __future__ import annotations

import asyncio
import time

from museserve.domain import PositionLogprobs, TokenLogprob
from museserve.engine.plan import RowSampling, RowToken
from museserve.engine.request_state import RequestState
from museserve.engine.sequence import Sequence, SequenceStatus
from museserve.engine.stats import RequestRecord
from museserve.errors import DeadlineExceeded, MuseError, ResourceExhausted
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.preprocess.tokenizer import Tokenizer


class Request:
    def __init__(
        self,
        prepared: PreparedRequest,
        seq: Sequence,
        output: RequestState,
        sampler: object,
        record: RequestRecord,
    ):
        self.prepared = prepared
        self.seq = seq
        self.output = output
        self.sampler = sampler  # the runner's, opaque here (`StepRunner.prepare`)
        self.record = record
        self.arrival = time.monotonic()
        self.chunks: asyncio.Queue[GenerationChunk | MuseError] = asyncio.Queue()
        self.last_sent: float | None = None  # when a chunk last went out
        self.last_token_at: float | None = None
        # While queued: (tokens past its cached prefix, time.monotonic() of that lookup).
        self.uncached_lookup: tuple[int, float] | None = None
        self.ended = False

    @property
    def request_id(self) -> str:
        return self.prepared.request_id

    @property
    def queued_before_first_token(self) -> bool:
        """Waiting to be scheduled (at first, or again after a preemption) with no token out yet."""
        return self.last_token_at is None and self.seq.status is SequenceStatus.WAITING

    def too_late_to_start(self, now_unix_s: float, prefill_s: float) -> str | None:
        """Why it can no longer start in time if its prefill, starting now, takes `prefill_s`:
        "deadline", "objective" (its tier's time-to-first-token), or None when it still can."""
        first_token_at = now_unix_s + prefill_s
        if first_token_at > self.prepared.deadline_unix_s:
            return "deadline"
        objective = self.prepared.first_token_by_unix_s
        if objective > 0 and first_token_at > objective:
            return "objective"
        return None

    def late_error(self, reason: str, now_unix_s: float, prefill_s: float, retry_after_s: float) -> MuseError:
        """What its stream raises when it is ended for `reason` (`too_late_to_start`)."""
        prepared = self.prepared
        if reason == "deadline":
            left = _time_left(prepared.deadline_unix_s - now_unix_s, prefill_s)
            return DeadlineExceeded(f"the request could not start before its deadline: {left}")
        left = _time_left(prepared.first_token_by_unix_s - now_unix_s, prefill_s)
        return ResourceExhausted(
            f"model {prepared.pool} could not start the request within its tier's time-to-first-token objective: "
            f"{left}",
            retry_after_s=retry_after_s,
        )

    def row(self, logits_row: int) -> RowSampling:
        """How its token of the step just planned is sampled; the plan already counts that
        token as pending, so the ones before it are `num_pending - 1`."""
        seq = self.seq
        pending = seq.num_pending - 1
        return RowSampling(
            self.request_id,
            logits_row,
            self.sampler,
            seq.token_ids,
            seq.num_prompt_tokens,
            len(seq.token_ids),
            pending,
            self.output.forced_token(pending),
        )

    def take_chunk(self) -> GenerationChunk:
        return self.output.take_chunk(self.seq.num_cached_tokens)


def position_logprobs(tokenizer: Tokenizer, picked: RowToken) -> PositionLogprobs:
    """The chosen token's log probability and the most likely alternatives."""

    def entry(token_id: int, value: float) -> TokenLogprob:
        return TokenLogprob(tokenizer.decode([token_id], skip_special_tokens=False), token_id, value)

    assert picked.logprob is not None
    return PositionLogprobs(entry(picked.token, picked.logprob), tuple(entry(t, v) for t, v in picked.top))


def _time_left(left_s: float, prefill_s: float) -> str:
    if left_s <= 0:
        return f"that time passed {-left_s:.2f} s ago while it waited"
    return f"{left_s:.2f} s remained and its prompt needs about {prefill_s:.2f} s of prefill"
