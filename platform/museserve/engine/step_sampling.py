"""One token per sampling sequence of a step, from the step's logits.

For each sequence that samples this step (a decode, or the last chunk of a prefill):
logits processors (penalties, grammar constraints, the thinking budget) change its row in
place, then its own temperature, top-p, top-k and seeded generator pick the token, unless
its state forces one. Log probabilities, when asked for, are the model's own: taken
before any processor or temperature.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from museserve.domain import PositionLogprobs, TokenLogprob
from museserve.engine.logits_processors import LogitsProcessor
from museserve.engine.request_state import RequestState
from museserve.engine.sampler import sample_batch
from museserve.engine.scheduler import Scheduler, SchedulerPlan
from museserve.engine.stats import RequestRecord
from museserve.messages import PreparedRequest
from museserve.preprocess.tokenizer import MuseTokenizer

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


@torch.inference_mode()  # processors change the executor's logits in place
def sample_step(
    plan: SchedulerPlan,
    logits: torch.Tensor,
    active: Mapping[str, ActiveRequest],
    scheduler: Scheduler,
    tokenizer: MuseTokenizer,
) -> Sampled:
    """`logits`: [sampling sequences of `plan`, vocab], in plan order."""
    ids = [item.request_id for item in plan.sequences if item.samples]
    actives = [active.get(rid) for rid in ids]
    # Requests that ended while the step ran (abort, deadline) get no token.
    rows = [i for i, a in enumerate(actives) if a is not None and scheduler.get(ids[i]) is not None]
    if not rows:
        return {}
    if len(rows) < logits.shape[0]:
        logits = logits[rows]
    wants_logprobs = [row for row, i in enumerate(rows) if actives[i].request.logprobs]
    raw_logprobs = {}
    if wants_logprobs:
        raw_logprobs = dict(zip(wants_logprobs, logits[wants_logprobs].log_softmax(dim=-1), strict=True))
    for row, i in enumerate(rows):
        if actives[i].processors:
            seq = scheduler.get(ids[i])
            prompt, output = seq.token_ids[: seq.num_prompt_tokens], seq.token_ids[seq.num_prompt_tokens :]
            for processor in actives[i].processors:
                logits[row] = processor(prompt, output, logits[row])
    picked = sample_batch(
        logits,
        temperatures=[actives[i].request.temperature for i in rows],
        top_ps=[actives[i].request.top_p for i in rows],
        top_ks=[actives[i].request.top_k for i in rows],
        generators=[actives[i].generator for i in rows],
    )
    out: Sampled = {}
    for row, (i, token) in enumerate(zip(rows, picked, strict=True)):
        forced = actives[i].state.forced_token()
        token = token if forced is None else forced
        row_logprobs = raw_logprobs.get(row)
        position = None
        if row_logprobs is not None:
            position = position_logprobs(tokenizer, row_logprobs, token, actives[i].request.top_logprobs)
        out[ids[i]] = (token, position)
    return out


def position_logprobs(tokenizer: MuseTokenizer, logprobs: torch.Tensor, token: int, top: int) -> PositionLogprobs:
    """The chosen token's log probability and the `top` most likely alternatives."""

    def entry(token_id: int, value: float) -> TokenLogprob:
        return TokenLogprob(tokenizer.decode([token_id], skip_special_tokens=False), token_id, value)

    alternatives = ()
    if top:
        values, token_ids = logprobs.topk(top)
        alternatives = tuple(entry(t, v) for t, v in zip(token_ids.tolist(), values.tolist(), strict=True))
    return PositionLogprobs(entry(token, float(logprobs[token])), alternatives)
