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

import torch

from museserve.engine.plan import RowSampling, RowToken
from museserve.runner.request_sampler import RequestSampler
from museserve.runner.sampler import sample_batch


def output_ids(row: RowSampling) -> list[int]:
    """The row's output so far, the pending token included (what the processors see)."""
    sampler: RequestSampler = row.sampler
    output = list(row.token_ids[row.num_prompt_tokens : row.num_known_tokens])
    if row.num_pending:
        output.append(sampler.last_token)
    return output


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
