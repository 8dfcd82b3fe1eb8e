"""A plan's tensors: token ids, positions, the rows that sample, the batch's KV layout, and
media feature rows. The only place media bytes become tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from museserve.engine.plan import SchedulerPlan
from museserve.runner.kv_pool import BatchLayout


@dataclass(frozen=True)
class StepInputs:
    ids: Tensor  # [T] long: the step's new tokens, sequence after sequence
    positions: Tensor  # [T] long
    rows: Tensor  # [S + P] long: the sampling rows (drafts' included), then the scored prompt positions
    layout: BatchLayout


def step_inputs(plan: SchedulerPlan, block_size: int, decode_group: int, device: torch.device) -> StepInputs:
    """Built on the CPU; they cross to the device in a few copies: one for the token ids,
    positions and sampled rows, the rest in `BatchLayout.to`."""
    token_ids: list[int] = []
    token_positions: list[int] = []
    sample_rows: list[int] = []
    scored_rows: list[int] = []
    for item in plan.sequences:
        if item.prompt_targets:
            first = len(token_ids) + item.targets_from
            scored_rows.extend(range(first, first + len(item.prompt_targets)))
        token_ids.extend(item.token_ids)
        token_positions.extend(range(item.first_position, item.first_position + item.num_new_tokens))
        if item.samples:  # its last token's row, and one per draft before it
            sample_rows.extend(range(len(token_ids) - item.num_logits_rows, len(token_ids)))
    sample_rows += scored_rows
    sequences = plan.sequences
    layout = BatchLayout.build(
        [item.block_ids for item in sequences],
        [item.first_position for item in sequences],
        [item.num_new_tokens for item in sequences],
        block_size,
        decode_group,
        pack_prefill=device.type != "cpu",
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
