"""A draft model's proposals: a smaller checkpoint with the target's tokenizer, in the same
replica, on the same device, with a paged KV cache of its own.

The draft's KV pool has the target's block count and block size and is addressed by the same
block ids, so it needs no block manager: the draft writes its KV where the target writes its own.
Every prefill chunk of a step goes through the draft too (prompts, media and recomputes after a
preemption), so a prompt block the target's prefix cache serves holds the draft's KV for the same
tokens. A decode token goes through the draft only when its request speculates in that step:
then the draft first catches up on the tokens it has not fed yet (`DraftState.num_valid`: those
accepted while the request did not speculate, and the last proposal of a fully accepted step),
then decodes greedily or samples (the request's own temperature, top-k, top-p and generator) one
token per pass for up to `num_speculative` passes. A step with no speculating request costs the
draft only its prefill chunks, so a large batch, or a request whose proposals are paused, pays
almost nothing for the draft.

Where the draft's KV is stale (a cached block that held an earlier answer, never fed to the
draft) its proposals are worse, never wrong: the target verifies every one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from museserve.engine.plan import RowSampling, ScheduledSequence, SchedulerPlan
from museserve.runner.model_runner import ModelRunner
from museserve.runner.proposer import Proposal
from museserve.runner.request_sampler import RequestSampler
from museserve.runner.sampler import draw, filtered_probs

MAX_CATCH_UP = 2048  # most tokens a request's draft catches up on in one step


@dataclass
class DraftState:
    num_valid: int  # leading positions of the request whose draft KV is written


class DraftProposer:
    def __init__(self, runner: ModelRunner):
        """`runner`: the draft model over its own KV pool."""
        self.runner = runner

    def propose(self, plan: SchedulerPlan, rows: list[RowSampling]) -> dict[str, Proposal]:
        by_id = {row.request_id: row for row in rows}
        fed = [self._draft_item(item, by_id.get(item.request_id)) for item in plan.sequences]
        first_pass = tuple(item for item in fed if item is not None)
        if not first_pass:
            return {}
        logits = self.runner.execute(SchedulerPlan(first_pass, ()))  # a row per speculating sequence
        drafting = [item for item in first_pass if item.samples]
        tokens: dict[str, list[int]] = {item.request_id: [] for item in drafting}
        probs: dict[str, list[Tensor]] = {item.request_id: [] for item in drafting}
        slots = {item.request_id: item.num_speculative for item in drafting}
        positions = {item.request_id: item.first_position + item.num_new_tokens for item in drafting}
        while drafting:
            for item, row_logits in zip(drafting, logits, strict=True):
                token, q = _draw(row_logits, by_id[item.request_id].sampler)
                tokens[item.request_id].append(token)
                if q is not None:
                    probs[item.request_id].append(q)
            drafting = [item for item in drafting if len(tokens[item.request_id]) < slots[item.request_id]]
            if not drafting:
                break
            step = tuple(_feed(item, tokens[item.request_id][-1], positions) for item in drafting)
            logits = self.runner.execute(SchedulerPlan(step, ()))
        for request_id, position in positions.items():
            by_id[request_id].sampler.proposer_state.num_valid = position  # the proposals fed back
        return {
            request_id: Proposal(tuple(drawn), torch.stack(probs[request_id]) if probs[request_id] else None)
            for request_id, drawn in tokens.items()
        }

    def _draft_item(self, item: ScheduledSequence, row: RowSampling | None) -> ScheduledSequence | None:
        """What the draft computes of `item` this step: a prefill chunk as it is (no logits), a
        speculating sequence's tokens after catching up (its last row's logits), or nothing."""
        chunk = dataclasses.replace(
            item, samples=False, prompt_targets=(), targets_from=0, prompt_top=0, num_speculative=0, num_draft=0
        )
        is_decode = item.num_new_tokens == 1 and not item.media
        if row is None:
            return None if is_decode else chunk
        state = row.sampler.proposer_state
        if not isinstance(state, DraftState):
            state = row.sampler.proposer_state = DraftState(item.first_position)  # its prefix was fed as prompt
        if item.num_speculative == 0:
            if is_decode:
                return None  # fed later, if it speculates again
            state.num_valid = item.first_position + item.num_new_tokens
            return chunk
        gap = item.first_position - state.num_valid
        if gap > 0 and item.media:
            gap = 0  # media rows are offset from the step's first token: the draft keeps that token's KV stale
        if gap > MAX_CATCH_UP:  # a long spell without speculating: catch up first, propose later
            start = state.num_valid
            state.num_valid += MAX_CATCH_UP
            missing = tuple(row.token_ids[start : state.num_valid])
            return dataclasses.replace(chunk, first_position=start, token_ids=missing, media=())
        if gap > 0:
            missing = tuple(row.token_ids[state.num_valid : item.first_position])
            chunk = dataclasses.replace(chunk, first_position=state.num_valid, token_ids=(*missing, *chunk.token_ids))
        state.num_valid = item.first_position + item.num_new_tokens
        return dataclasses.replace(chunk, samples=True, num_speculative=item.num_speculative)


def _feed(item: ScheduledSequence, token: int, positions: dict[str, int]) -> ScheduledSequence:
    """One decode pass of a drafting sequence: its latest proposal at the next position."""
    position = positions[item.request_id]
    positions[item.request_id] = position + 1
    return ScheduledSequence(item.request_id, position, (token,), item.block_ids, samples=True)


def _draw(logits: Tensor, sampler: RequestSampler) -> tuple[int, Tensor | None]:
    """A proposal from one draft logits row [V], and the distribution it came from (None: greedy)."""
    params = sampler.params
    if params.temperature == 0:
        return int(logits.argmax()), None
    q = filtered_probs(logits[None].float(), params.temperature, params.top_p, params.top_k)[0]
    return draw(q, sampler.generator), q
