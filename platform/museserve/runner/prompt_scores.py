"""Prompt scoring on the device thread: the log probability of each prompt token given the
tokens before it (`sampling.prompt_logprobs`, what evaluation harnesses read with `echo`).

A step's logits hold, after its sampling rows, one row per scored position (plan order); the
row of position p is the model's distribution for token p + 1, so its log-softmax at that
token is the prompt token's log probability. These are the model's raw logits: no penalty,
temperature or grammar applies to a prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor

from museserve.engine.plan import RowToken, SchedulerPlan

# Rows normalised at once: a [rows, vocab] float32 log-softmax (a 512-token chunk over a
# 49k vocabulary is 100 MB); larger chunks go through in slices.
ROWS_PER_SLICE = 256


def score_prompts(plan: SchedulerPlan, logits: Tensor) -> list[RowToken]:
    """`logits` [scored positions of the plan, vocab] -> one RowToken per position: the target
    prompt token, its log probability and the `prompt_top` most likely tokens."""
    out: list[RowToken] = []
    start = 0
    for item in plan.sequences:
        count = len(item.prompt_targets)
        if not count:
            continue
        targets = torch.tensor(item.prompt_targets, dtype=torch.long, device=logits.device)
        for begin in range(0, count, ROWS_PER_SLICE):
            end = min(begin + ROWS_PER_SLICE, count)
            logprobs = logits[start + begin : start + end].float().log_softmax(dim=-1)
            chosen = logprobs.gather(1, targets[begin:end, None])[:, 0].tolist()
            tops: list[tuple[tuple[int, float], ...]] = [()] * (end - begin)
            if item.prompt_top:
                values, ids = logprobs.topk(item.prompt_top, dim=-1)
                tops = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
            out.extend(
                RowToken(token, value, top)
                for token, value, top in zip(item.prompt_targets[begin:end], chosen, tops, strict=True)
            )
        start += count
    return out


def num_scored(plan: SchedulerPlan) -> int:
    return sum(len(item.prompt_targets) for item in plan.sequences)
