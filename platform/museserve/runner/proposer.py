"""What proposes tokens for a step to verify, behind one interface.

A proposer runs on the device thread, after the plan's pending tokens are known and before the
target model runs. For each sampling sequence the scheduler gave `num_speculative` slots, it
returns up to that many tokens to follow the sequence's last one (fewer, or none, where it has
nothing worth proposing), and where it drew them from a distribution, that distribution, which
rejection sampling needs (`runner.verify`).

Proposers today: n-gram prompt lookup (`runner.ngram`) and a draft model (`runner.draft`). A
head on the target's own hidden states (EAGLE, MTP) fits the same interface: it would read the
hidden states of the step before from the executor, where a draft model reads its own KV cache.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from museserve.engine.plan import RowSampling, SchedulerPlan


@dataclass(frozen=True)
class Proposal:
    tokens: tuple[int, ...]
    probs: Tensor | None = None  # [len(tokens), vocab]: what each was drawn from; None: chosen outright


class Proposer(Protocol):
    def propose(self, plan: SchedulerPlan, rows: list[RowSampling]) -> dict[str, Proposal]:
        """Proposals by request id, for the plan's sequences with `num_speculative` slots (at
        most that many tokens each). Called once per step, for every step, in order: a proposer
        with a KV cache of its own keeps it in step with the target's here."""
        ...


def with_drafts(plan: SchedulerPlan, proposals: dict[str, Proposal]) -> SchedulerPlan:
    """The plan the target runs: each proposal's tokens appended to its sequence's."""
    if not any(p.tokens for p in proposals.values()):
        return plan
    sequences = []
    for item in plan.sequences:
        proposal = proposals.get(item.request_id)
        if proposal is None or not proposal.tokens:
            sequences.append(item)
            continue
        if len(proposal.tokens) > item.num_speculative:
            raise ValueError(f"{len(proposal.tokens)} tokens proposed for {item.num_speculative} slots")
        sequences.append(
            dataclasses.replace(item, token_ids=(*item.token_ids, *proposal.tokens), num_draft=len(proposal.tokens))
        )
    return dataclasses.replace(plan, sequences=tuple(sequences))
