"""Verification of proposed tokens: which of a row's proposals the target keeps, and its own
token after them, so that the output is what decoding one token at a time would give.

Row j of a speculating sequence's logits is the target's next-token distribution after its
last token and the first j proposals. Rows are walked in order; at row j the request's
processors (penalties, min_tokens, the grammar) see the output with the j proposals before it,
all accepted, so a grammar matcher is only ever fed accepted tokens and never rolls back.

- Greedy (temperature 0): proposal j is kept while it is the processed row's argmax; at the
  first mismatch the argmax is taken instead. Token for token what plain greedy decoding gives.
- Sampling: speculative rejection sampling. A draft model's proposal d, drawn from q, is kept
  with probability min(1, p(d) / q(d)), p the row's filtered distribution (temperature, top-k,
  top-p: what `sample_batch` draws from); on rejection a token is drawn from max(0, p - q),
  renormalised. An n-gram proposal is q = one-hot(d): the row draws its token from p as plain
  decoding would, with the same uniform, and keeps d when the draw is d. Either way the tokens
  are distributed as p exactly. After the last kept proposal, the next row is sampled as usual.

A forced token (the reasoning close marker) and the grammar's budget steering (`checked`) apply
at every row as they would one token at a time; a token they change ends the row there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from museserve.engine.plan import RowSampling, RowToken
from museserve.runner.request_sampler import RequestSampler, output_ids
from museserve.runner.sampler import draw, filtered_probs, sample_batch


@torch.inference_mode()  # processors change the executor's logits in place
def verify_row(row: RowSampling, logits: Tensor, drafts: tuple[int, ...], draft_probs: Tensor | None) -> RowToken:
    """logits [len(drafts) + 1, V] float32 (changed in place); draft_probs [len(drafts), V], the
    proposer's distributions (None: proposals made without one, as n-gram lookup)."""
    sampler: RequestSampler = row.sampler
    params = sampler.params
    prompt = row.token_ids[: row.num_prompt_tokens]
    output = output_ids(row)
    raw = logits.log_softmax(dim=-1) if params.logprobs else None  # the model's own, before processors
    kept: list[RowToken] = []
    for j in range(len(drafts) + 1):
        x = logits[j]
        for processor in sampler.processors:
            x = processor(prompt, output, x)
        proposal = drafts[j] if j < len(drafts) else None
        token = row.forced_token if j == 0 and row.forced_token is not None else None
        if token is None:
            token = _choose(x, proposal, None if draft_probs is None or proposal is None else draft_probs[j], sampler)
            if sampler.constraint is not None:
                token = sampler.constraint.checked(token)
        result = _row_token(token, raw[j] if raw is not None else None, sampler)
        if token != proposal:
            sampler.last_token = token
            return RowToken(
                result.token, result.logprob, result.top, result.steered, accepted=tuple(kept),
                num_proposed=len(drafts),
            )  # fmt: skip
        kept.append(result)
        output.append(token)
    raise AssertionError("the last row has no proposal, so it always returns")


def _choose(x: Tensor, proposal: int | None, q: Tensor | None, sampler: RequestSampler) -> int:
    """The target's token at this row: the proposal itself when kept."""
    params = sampler.params
    if params.temperature == 0:
        return int(x.argmax())
    if q is None:
        # After the last proposal, or a proposal made outright (n-gram, q one-hot): the row's own
        # draw, kept when it is the proposal. That is rejection sampling for a one-hot q (kept
        # with probability p(d), otherwise a draw from p without d), with one uniform per token,
        # as plain decoding draws: a seeded answer is the same with and without speculation.
        return sample_batch(
            x[None], temperatures=[params.temperature], top_ps=[params.top_p], top_ks=[params.top_k],
            generators=[sampler.generator],
        )[0]  # fmt: skip
    assert proposal is not None
    p = filtered_probs(x[None], params.temperature, params.top_p, params.top_k)[0]
    q = q.to(p.device)
    u = float(torch.rand(1, generator=sampler.generator))
    if u * float(q[proposal]) < float(p[proposal]):
        return proposal
    residual = (p - q).clamp_(min=0.0)
    if float(residual.sum()) <= 0.0:  # p equals q: the draw falls back to p itself
        residual = p
    return draw(residual, sampler.generator)


def _row_token(token: int, raw_logprobs: Tensor | None, sampler: RequestSampler) -> RowToken:
    steered = sampler.constraint is not None and sampler.constraint.steered
    if raw_logprobs is None:
        return RowToken(token, steered=steered)
    top: tuple[tuple[int, float], ...] = ()
    if sampler.params.top_logprobs:
        values, ids = raw_logprobs.topk(sampler.params.top_logprobs)
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return RowToken(token, float(raw_logprobs[token]), top, steered)
