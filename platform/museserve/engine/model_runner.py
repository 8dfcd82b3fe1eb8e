"""Runs one scheduled step on the device: the only engine code that touches tensors.

Input is a `SchedulerPlan` (token ids, positions implied by first_position, block ids);
output is the logits of the sequences that sample this step, in plan order. Executors
that run this in other processes (tensor and pipeline parallel workers) take the same
plan, so the scheduler never knows where the model runs.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from museserve.engine.kv_pool import BatchLayout, PagedKVPool, PagedStep
from museserve.engine.scheduler import SchedulerPlan
from museserve.model import MuseForCausalLM


class Executor(Protocol):
    num_blocks: int  # KV blocks each worker's pool holds; the block manager hands out these ids

    def execute(self, plan: SchedulerPlan) -> Tensor:
        """Runs the plan; returns float32 logits [num_sampling_sequences, vocab] on the CPU."""
        ...


class ModelRunner:
    def __init__(self, model: MuseForCausalLM, pool: PagedKVPool):
        self.model = model
        self.pool = pool
        self.device = next(model.parameters()).device
        self.num_blocks = pool.num_blocks

    @torch.inference_mode()
    def execute(self, plan: SchedulerPlan) -> Tensor:
        bs = self.pool.block_size
        input_ids, positions, slot_mapping, starts, context_slots, sample_rows = [], [], [], [0], [], []
        for item in plan.sequences:
            end = item.first_position + item.num_new_tokens
            blocks = torch.tensor(item.block_ids, dtype=torch.long)
            all_positions = torch.arange(end)
            slots = blocks[all_positions // bs] * bs + all_positions % bs  # [context_len]
            input_ids.extend(item.token_ids)
            positions.append(all_positions[item.first_position :])
            slot_mapping.append(slots[item.first_position :])
            context_slots.append(slots.to(self.device))
            starts.append(starts[-1] + item.num_new_tokens)
            if item.samples:
                sample_rows.append(starts[-1] - 1)
        layout = BatchLayout.build(torch.cat(slot_mapping).to(self.device), tuple(starts), tuple(context_slots))
        ids = torch.tensor(input_ids, dtype=torch.long, device=self.device)
        hidden = self.model(self.model.embed(ids), torch.cat(positions).to(self.device), PagedStep(self.pool, layout))
        rows = torch.tensor(sample_rows, dtype=torch.long, device=self.device)
        return self.model.compute_logits(hidden[rows]).float().cpu()
