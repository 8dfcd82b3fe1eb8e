"""A request's sampling state on the device side: built once when the request arrives, used
by every row of it (`RowSampling.sampler`), touched only by the device thread after that."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from museserve.domain import SamplingParams
from museserve.engine.plan import RowSampling
from museserve.messages import PreparedRequest
from museserve.runner.logits_processors import LogitsProcessor, processors_for
from museserve.runner.sampler import make_generator
from museserve.structured.constraint import OutputConstraint


@dataclass(eq=False)
class RequestSampler:
    params: SamplingParams  # resolved: no field None
    generator: torch.Generator
    processors: tuple[LogitsProcessor, ...]  # penalties, then the grammar constraint
    constraint: OutputConstraint | None
    last_token: int = 0  # the token this request's latest row sampled (fills PENDING)
    proposer_state: object = None  # the pool's proposer keeps what it learns of the request here

    @staticmethod
    def for_request(
        request: PreparedRequest, constraint: OutputConstraint | None, end_ids: tuple[int, ...] = ()
    ) -> RequestSampler:
        """`end_ids`: the format's stop ids, which min_tokens holds back."""
        params = request.sampling
        processors = processors_for(request, constraint, end_ids)
        return RequestSampler(params, make_generator(params.seed), processors, constraint)


def output_ids(row: RowSampling) -> list[int]:
    """The row's output so far, the pending token included (what the processors see)."""
    sampler: RequestSampler = row.sampler
    output = list(row.token_ids[row.num_prompt_tokens : row.num_known_tokens])
    if row.num_pending:
        output.append(sampler.last_token)
    return output
