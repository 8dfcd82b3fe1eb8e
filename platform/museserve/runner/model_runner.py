"""Runs one scheduled step on the device: the only engine code that touches tensors.

Input is a `SchedulerPlan` (token ids, positions implied by first_position, block ids,
media feature rows as bytes); output is the logits of the sequences that sample this step,
in plan order. Executors that run this in other processes (tensor and pipeline parallel
workers) take the same plan, so the scheduler never knows where the model runs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from museserve.engine.plan import SchedulerPlan
from museserve.lora.delta import LoraBatch
from museserve.lora.weights import LoraWeights
from museserve.model.muse import MuseForCausalLM
from museserve.runner.decode_graphs import DecodeGraphs
from museserve.runner.kv_pool import SDPA_BACKENDS, PagedKVPool
from museserve.runner.kv_tier import KVTier
from museserve.runner.paged_step import PagedStep
from museserve.runner.step_inputs import media_inputs, step_inputs

# Decode sequences per batched attention call. On a CPU the padding to the group's longest
# context costs compute, so groups stay small; on a GPU each call's launches cost more than
# the padding, so all of a step's decodes go in one call.
CPU_DECODE_GROUP = 8
GPU_DECODE_GROUP = 1024


class ModelRunner:
    def __init__(
        self,
        model: MuseForCausalLM,
        pool: PagedKVPool,
        *,
        cuda_graphs: bool = True,
        kv_tier: KVTier | None = None,
        lora: LoraWeights | None = None,
    ):
        """`cuda_graphs`: on a GPU, replay captured graphs for decode steps (`DecodeGraphs`).
        `kv_tier`: the pool's second tier, which plans' kv_saves/kv_loads copy to and from.
        `lora`: the resident adapters' weights, already attached to `model`'s projections."""
        self.model = model
        self.pool = pool
        self.kv_tier = kv_tier
        self.lora = lora
        self.kv_tier_slots = kv_tier.num_slots if kv_tier is not None else 0
        self.device = next(model.parameters()).device
        self.num_blocks = pool.num_blocks
        self.media_feature_dims = model.config.media_feature_dims
        self.on_accelerator = self.device.type == "cuda"
        self.decode_group = CPU_DECODE_GROUP if self.device.type == "cpu" else GPU_DECODE_GROUP
        self.graphs = DecodeGraphs(model, pool) if cuda_graphs and self.device.type == "cuda" else None

    @torch.inference_mode()
    def execute(self, plan: SchedulerPlan) -> Tensor:
        if plan.kv_saves or plan.kv_loads:
            # Before the step, eager or replayed: it may overwrite the saved blocks and reads the loaded ones.
            self.kv_tier.apply(plan.kv_saves, plan.kv_loads)
        bucket = self.graphs.bucket(plan) if self.graphs is not None else None
        logits = self._eager(plan) if bucket is None else self.graphs.replay(plan, bucket)
        if logits.is_cuda:
            torch.cuda.current_stream(logits.device).synchronize()  # here, in the executor's thread
        return logits

    def _eager(self, plan: SchedulerPlan) -> Tensor:
        inputs = step_inputs(plan, self.pool.block_size, self.decode_group, self.device)
        media_rows, media_positions = media_inputs(plan, self.model.model.embed_tokens.weight.dtype, self.device)
        if self.lora is not None:
            self.lora.context.batch = LoraBatch.build(lora_row_slots(plan), self.device)
        try:
            with sdpa_kernel(SDPA_BACKENDS):
                embeds = self.model.embed(inputs.ids, media_rows, media_positions)
                hidden = self.model(embeds, inputs.positions, PagedStep(self.pool, inputs.layout))
        finally:
            if self.lora is not None:
                self.lora.context.batch = None
        return self.model.compute_logits(hidden[inputs.rows])


def lora_row_slots(plan: SchedulerPlan) -> list[int]:
    """Each of the step's token rows' adapter slot (-1: none), sequence after sequence."""
    slots: list[int] = []
    for item in plan.sequences:
        slots.extend([item.lora_slot] * item.num_new_tokens)
    return slots
