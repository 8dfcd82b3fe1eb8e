"""Runs one scheduled step on the device: the only engine code that touches tensors.

Input is a `SchedulerPlan` (token ids, positions implied by first_position, block ids,
media feature rows as bytes); output is the logits of the sequences that sample this step,
in plan order. This is the only place media bytes become tensors. Executors
that run this in other processes (tensor and pipeline parallel workers) take the same
plan, so the scheduler never knows where the model runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from museserve.engine.decode_graphs import DecodeGraphs
from museserve.engine.kv_pool import SDPA_BACKENDS, BatchLayout, PagedKVPool, PagedStep
from museserve.engine.scheduler import SchedulerPlan
from museserve.model import MuseForCausalLM

# Decode sequences per batched attention call. On a CPU the padding to the group's longest
# context costs compute, so groups stay small; on a GPU each call's launches cost more than
# the padding, so all of a step's decodes go in one call.
CPU_DECODE_GROUP = 8
GPU_DECODE_GROUP = 1024


class Executor(Protocol):
    num_blocks: int  # KV blocks each worker's pool holds; the block manager hands out these ids
    # Media kind -> feature values per token the model projects; executors of text-only models may omit it.
    media_feature_dims: Mapping[str, int]

    def execute(self, plan: SchedulerPlan) -> Tensor:
        """Runs the plan; returns float32 logits [num_sampling_sequences, vocab], on any device,
        already computed: the caller samples on its event loop, which must not wait on a device."""
        ...


class ModelRunner:
    def __init__(self, model: MuseForCausalLM, pool: PagedKVPool, *, cuda_graphs: bool = True):
        """`cuda_graphs`: on a GPU, replay captured graphs for decode steps (`DecodeGraphs`)."""
        self.model = model
        self.pool = pool
        self.device = next(model.parameters()).device
        self.num_blocks = pool.num_blocks
        self.media_feature_dims = model.config.media_feature_dims
        self.decode_group = CPU_DECODE_GROUP if self.device.type == "cpu" else GPU_DECODE_GROUP
        self.graphs = DecodeGraphs(model, pool) if cuda_graphs and self.device.type == "cuda" else None

    @torch.inference_mode()
    def execute(self, plan: SchedulerPlan) -> Tensor:
        bucket = self.graphs.bucket(plan) if self.graphs is not None else None
        logits = self._eager(plan) if bucket is None else self.graphs.replay(plan, bucket)
        if logits.is_cuda:
            torch.cuda.current_stream(logits.device).synchronize()  # here, in the executor's thread
        return logits

    def _eager(self, plan: SchedulerPlan) -> Tensor:
        inputs = step_inputs(plan, self.pool.block_size, self.decode_group, self.device)
        media_rows, media_positions = media_inputs(plan, self.model.model.embed_tokens.weight.dtype, self.device)
        with sdpa_kernel(SDPA_BACKENDS):
            embeds = self.model.embed(inputs.ids, media_rows, media_positions)
            hidden = self.model(embeds, inputs.positions, PagedStep(self.pool, inputs.layout))
        return self.model.compute_logits(hidden[inputs.rows])


@dataclass(frozen=True)
class StepInputs:
    ids: Tensor  # [T] long: the step's new tokens, sequence after sequence
    positions: Tensor  # [T] long
    rows: Tensor  # [S] long: the rows of the sequences that sample, in plan order
    layout: BatchLayout


def step_inputs(plan: SchedulerPlan, block_size: int, decode_group: int, device: torch.device) -> StepInputs:
    """Built on the CPU; they cross to the device in a few copies: one for the token ids,
    positions and sampled rows, the rest in `BatchLayout.to`."""
    token_ids: list[int] = []
    token_positions: list[int] = []
    sample_rows: list[int] = []
    for item in plan.sequences:
        token_ids.extend(item.token_ids)
        token_positions.extend(range(item.first_position, item.first_position + item.num_new_tokens))
        if item.samples:
            sample_rows.append(len(token_ids) - 1)
    sequences = plan.sequences
    layout = BatchLayout.build(
        [item.block_ids for item in sequences],
        [item.first_position for item in sequences],
        [item.num_new_tokens for item in sequences],
        block_size,
        decode_group,
    ).to(device)
    packed = torch.tensor(token_ids + token_positions + sample_rows, dtype=torch.long).to(device)
    ids, positions, rows = packed.split((len(token_ids), len(token_positions), len(sample_rows)))
    return StepInputs(ids, positions, rows, layout)


def media_inputs(
    plan: SchedulerPlan, dtype: torch.dtype, device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per media kind: the step's feature rows [R, feature_dim] in `dtype`, and their rows [R]
    in the flattened batch. Empty dicts for a text-only step."""
    chunks: dict[str, list[bytes]] = {}
    flat_rows: dict[str, list[int]] = {}
    dims: dict[str, int] = {}
    base = 0  # the sequence's first row in the flattened batch
    for item in plan.sequences:
        for piece in item.media:
            if dims.setdefault(piece.kind, piece.feature_dim) != piece.feature_dim:
                raise ValueError(f"{piece.kind} rows of {piece.feature_dim} and {dims[piece.kind]} in one step")
            chunks.setdefault(piece.kind, []).append(piece.rows)
            start = base + piece.offset
            flat_rows.setdefault(piece.kind, []).extend(range(start, start + piece.num_rows))
        base += item.num_new_tokens
    media_rows, media_positions = {}, {}
    for kind, pieces in chunks.items():
        # One copy into a writable buffer (frombuffer warns on read-only bytes), one to the device.
        buffer = bytearray().join(pieces)
        host = torch.frombuffer(buffer, dtype=torch.float16).view(len(flat_rows[kind]), dims[kind])
        media_rows[kind] = host.to(device, dtype)
        media_positions[kind] = torch.tensor(flat_rows[kind], dtype=torch.long).to(device)
    return media_rows, media_positions
