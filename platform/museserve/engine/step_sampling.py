"""One token per sampling sequence of a step, from the step's logits, in three parts.

`plan_sampling` (event loop, before the step) reads each sampling sequence's parameters
from the engine's state; `sample_rows` (the engine's device thread, right after the model)
does all the tensor work; `collect` (event loop, after the step) keeps the tokens of the
requests still running. All of the engine's multi-threaded torch work thus runs on one
thread. On a CPU, torch's OpenMP workers belong to the thread that first used them; once a
second thread has its own, libgomp sees more workers than cores and stops every set
spinning between parallel regions: the same model steps ran 1.4x slower on two cores.

For each row, logits processors (penalties, grammar constraints, the thinking budget)
change it in place, then its own temperature, top-p, top-k and seeded generator pick the
token, unless its state forces one. Log probabilities, when asked for, are the model's own:
taken before any processor or temperature.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from museserve.domain import PositionLogprobs, TokenLogprob
from museserve.engine.constraint import OutputConstraint
from museserve.engine.logits_processors import LogitsProcessor
from museserve.engine.request_state import RequestState
from museserve.engine.sampler import sample_batch
from museserve.engine.scheduler import Scheduler, SchedulerPlan
from museserve.engine.stats import RequestRecord
from museserve.messages import PreparedRequest
from museserve.preprocess.tokenizer import Tokenizer

Sampled = dict[str, tuple[int, PositionLogprobs | None]]  # request id -> (token, its log probabilities)


@dataclass
class ActiveRequest:
    """A request the engine holds, from `generate` until its stream ends."""

    request: PreparedRequest
    state: RequestState
    record: RequestRecord
    generator: torch.Generator
    processors: tuple[LogitsProcessor, ...]
    arrival: float = field(default_factory=time.monotonic)
    chunks: asyncio.Queue = field(default_factory=asyncio.Queue)  # GenerationChunk | MuseError
    last_sent: float | None = None
    last_token_at: float | None = None


@dataclass(frozen=True, slots=True)
class RowSampling:
    """How one row of the step's logits becomes a token; read before the step runs."""

    request_id: str
    logits_row: int  # its row in the executor's logits
    request: PreparedRequest
    generator: torch.Generator
    processors: tuple[LogitsProcessor, ...]
    token_ids: list[int]  # the sequence's tokens; only appended to, and never while the step runs
    num_prompt_tokens: int
    num_tokens: int  # len(token_ids) when the step was planned
    forced_token: int | None


@dataclass(frozen=True, slots=True)
class RowToken:
    token: int
    logprob: float | None = None  # the chosen token's, when the request asked for log probabilities
    top: tuple[tuple[int, float], ...] = ()  # (token id, log probability), most likely first


def plan_sampling(plan: SchedulerPlan, active: Mapping[str, ActiveRequest], scheduler: Scheduler) -> list[RowSampling]:
    rows = []
    ids = [item.request_id for item in plan.sequences if item.samples]
    for logits_row, request_id in enumerate(ids):
        entry, seq = active.get(request_id), scheduler.get(request_id)
        if entry is None or seq is None:
            continue
        rows.append(
            RowSampling(
                request_id,
                logits_row,
                entry.request,
                entry.generator,
                entry.processors,
                seq.token_ids,
                seq.num_prompt_tokens,
                len(seq.token_ids),
                entry.state.forced_token(),
            )
        )
    return rows


@torch.inference_mode()  # processors change the executor's logits in place
def sample_rows(rows: list[RowSampling], logits: torch.Tensor) -> list[RowToken]:
    """`logits`: [sampling sequences of the plan, vocab] -> one token per entry of `rows`."""
    if not rows:
        return []
    if len(rows) < logits.shape[0]:
        logits = logits[[row.logits_row for row in rows]]
    wants_logprobs = [i for i, row in enumerate(rows) if row.request.logprobs]
    raw_logprobs = {}
    if wants_logprobs:
        raw_logprobs = dict(zip(wants_logprobs, logits[wants_logprobs].log_softmax(dim=-1), strict=True))
    for i, row in enumerate(rows):
        if row.processors:
            prompt = row.token_ids[: row.num_prompt_tokens]
            output = row.token_ids[row.num_prompt_tokens : row.num_tokens]
            for processor in row.processors:
                logits[i] = processor(prompt, output, logits[i])
    picked = sample_batch(
        logits,
        temperatures=[row.request.temperature for row in rows],
        top_ps=[row.request.top_p for row in rows],
        top_ks=[row.request.top_k for row in rows],
        generators=[row.generator for row in rows],
    )
    out = []
    for i, (row, token) in enumerate(zip(rows, picked, strict=True)):
        if row.forced_token is not None:
            token = row.forced_token
        else:
            for processor in row.processors:
                if isinstance(processor, OutputConstraint):  # may steer a JSON answer short of its budget
                    token = processor.checked(token)
        row_logprobs = raw_logprobs.get(i)
        if row_logprobs is None:
            out.append(RowToken(token))
            continue
        top = ()
        if row.request.top_logprobs:
            values, token_ids = row_logprobs.topk(row.request.top_logprobs)
            top = tuple(zip(token_ids.tolist(), values.tolist(), strict=True))
        out.append(RowToken(token, float(row_logprobs[token]), top))
    return out


def collect(
    rows: list[RowSampling],
    tokens: list[RowToken],
    active: Mapping[str, ActiveRequest],
    scheduler: Scheduler,
    tokenizer: Tokenizer,
) -> Sampled:
    """The tokens of the requests still running: one that ended while the step ran (abort,
    deadline) gets none."""
    out: Sampled = {}
    for row, picked in zip(rows, tokens, strict=True):
        if row.request_id not in active or scheduler.get(row.request_id) is None:
            continue
        position = None
        if picked.logprob is not None:
            position = position_logprobs(tokenizer, picked)
        out[row.request_id] = (picked.token, position)
    return out


def position_logprobs(tokenizer: Tokenizer, picked: RowToken) -> PositionLogprobs:
    """The chosen token's log probability and the most likely alternatives."""

    def entry(token_id: int, value: float) -> TokenLogprob:
        return TokenLogprob(tokenizer.decode([token_id], skip_special_tokens=False), token_id, value)

    assert picked.logprob is not None
    return PositionLogprobs(entry(picked.token, picked.logprob), tuple(entry(t, v) for t, v in picked.top))
