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
from museserve.engine.sequence import Sequence
from museserve.engine.stats import RequestRecord
from museserve.errors import MuseError
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
        self.ended = False

    @property
    def request_id(self) -> str:
        return self.prepared.request_id

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
