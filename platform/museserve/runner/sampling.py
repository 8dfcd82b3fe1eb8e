"""One token per sampling row of a step, from the step's logits, on the device thread.

All of the engine's multi-threaded torch work runs on that one thread (`DeviceRunner`): on a
CPU, torch's OpenMP workers belong to the thread that first used them; once a second thread
has its own, libgomp sees more workers than cores and stops every set spinning between
parallel regions: the same model steps ran 1.4x slower on two cores.

For each row, logits processors (penalties, grammar constraints) change it in place, then its
own temperature, top-p, top-k and seeded generator pick the token, unless a token is forced
(the reasoning close marker at the thinking budget). Log probabilities, when asked for, are
the model's own: taken before any processor or temperature.

A row may come from a step planned while the one before it ran (`num_pending`): the token
that step sampled is then the true tail of the output, read from the row's `RequestSampler`,
which this thread wrote when it sampled it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from museserve.engine.plan import RowSampling, RowToken, SchedulerPlan
from museserve.runner.proposer import Proposal
from museserve.runner.request_sampler import RequestSampler, output_ids
from museserve.runner.sampler import sample_batch
from museserve.runner.verify import verify_row


@torch.inference_mode()  # processors change the executor's logits in place
def sample_rows(rows: list[RowSampling], logits: torch.Tensor) -> list[RowToken]:
    """`logits`: [sampling sequences of the plan, vocab] -> one token per entry of `rows`."""
    if not rows:
        return []
    if len(rows) < logits.shape[0]:
        logits = logits[[row.logits_row for row in rows]]
    samplers: list[RequestSampler] = [row.sampler for row in rows]
    wants_logprobs = [i for i, s in enumerate(samplers) if s.params.logprobs]
    raw_logprobs = {}
    if wants_logprobs:
        raw_logprobs = dict(zip(wants_logprobs, logits[wants_logprobs].log_softmax(dim=-1), strict=True))
    for i, (row, sampler) in enumerate(zip(rows, samplers, strict=True)):
        if sampler.processors:
            prompt = row.token_ids[: row.num_prompt_tokens]
            output = output_ids(row)
            for processor in sampler.processors:
                logits[i] = processor(prompt, output, logits[i])
    picked = sample_batch(
        logits,
        temperatures=[s.params.temperature for s in samplers],
        top_ps=[s.params.top_p for s in samplers],
        top_ks=[s.params.top_k for s in samplers],
        generators=[s.generator for s in samplers],
    )
    out = []
    for i, (row, sampler, token) in enumerate(zip(rows, samplers, picked, strict=True)):
        token = _final_token(row, sampler, token)
        sampler.last_token = token
        steered = sampler.constraint is not None and sampler.constraint.steered
        row_logprobs = raw_logprobs.get(i)
        if row_logprobs is None:
            out.append(RowToken(token, steered=steered))
            continue
        top = ()
        if sampler.params.top_logprobs:
            values, token_ids = row_logprobs.topk(sampler.params.top_logprobs)
            top = tuple(zip(token_ids.tolist(), values.tolist(), strict=True))
        out.append(RowToken(token, float(row_logprobs[token]), top, steered))
    return out


def _final_token(row: RowSampling, sampler: RequestSampler, token: int) -> int:
    """A forced token wins, unless the pending token before it already was that token."""
    forced = row.forced_token
    if forced is not None and not (row.num_pending and sampler.last_token == forced):
        return forced
    if sampler.constraint is not None:  # may steer a JSON answer short of its budget
        return sampler.constraint.checked(token)
    return token


def sample_and_verify(
    plan: SchedulerPlan, rows: list[RowSampling], logits: torch.Tensor, proposals: Mapping[str, Proposal]
) -> list[RowToken]:
    """`logits`: each sampling sequence's rows in plan order (`num_logits_rows`: its last known
    token's row, then one after each draft) -> one RowToken per entry of `rows`, drafts verified
    (`runner.verify`)."""
    if not any(item.num_draft for item in plan.sequences):
        return sample_rows(rows, logits)
    starts: list[int] = []  # per sampling sequence: its first row
    start = 0
    for item in plan.sequences:
        if item.samples:
            starts.append(start)
            start += item.num_logits_rows
    out: list[RowToken | None] = [None] * len(rows)
    plain = [i for i, row in enumerate(rows) if not _drafts(proposals, row)]
    if plain:
        last = [starts[rows[i].logits_row] for i in plain]  # a plain row owns one logits row
        for i, token in zip(plain, sample_rows([rows[i] for i in plain], logits[last]), strict=True):
            out[i] = token
    for i, row in enumerate(rows):
        proposal = proposals.get(row.request_id)
        if out[i] is None and proposal is not None:
            first = starts[row.logits_row]
            out[i] = verify_row(row, logits[first : first + len(proposal.tokens) + 1], proposal.tokens, proposal.probs)
    return out  # type: ignore[return-value]  # every row is filled: plain or verified


def _drafts(proposals: Mapping[str, Proposal], row: RowSampling) -> tuple[int, ...]:
    proposal = proposals.get(row.request_id)
    return proposal.tokens if proposal is not None else ()
