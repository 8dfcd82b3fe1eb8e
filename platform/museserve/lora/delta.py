"""The LoRA delta of a batch whose rows use different adapters (punica's idea), added to the
base projection's output: out[n] += B[s] @ (A[s] @ x[n]) with s the slot of row n's adapter.
Nothing is merged into the base weights, and the base matmul is shared by every row.

On a CPU a step's adapted rows are grouped by slot once (`LoraBatch`), in one of two forms:
- grouped: many adapters with few rows each (decode steps): each slot's rows padded to the
  largest group, so each projection runs one batched matmul per half (shrink, expand) over
  the slots whatever their number: five small ops, where a loop would launch two per adapter;
- segments: few adapters, or very uneven groups (a long prefill chunk beside decodes): two
  matmuls per adapter over its contiguous rows, no padding.
On a GPU one Triton launch per half serves every row whatever its slot (`museserve_kernels.lora`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_PADDING = 1.0  # the grouped form is used while padding rows are at most this share of the real ones


@dataclass(frozen=True)
class Grouped:
    """Slots first_slot .. first_slot + num_slots - 1, `group` rows each: `gather` [num_slots *
    group] are the rows of x (padding: row N, a zero row appended when `padded`), `scatter` the
    rows of out they add to (padding: row 0, which gains zeros)."""

    first_slot: int
    num_slots: int
    group: int
    gather: Tensor
    scatter: Tensor
    padded: bool


@dataclass(frozen=True)
class LoraBatch:
    """One step's rows by adapter slot. `segments`: (slot, start, end) over the adapted rows in
    slot order; `order` [M] long: those rows' indices in the step (None when they are rows
    0..M-1 already in slot order). `row_slots` [N] long: every row's slot, -1 for none (built
    on a GPU only, where the kernels read it)."""

    row_slots: Tensor | None
    order: Tensor | None
    segments: tuple[tuple[int, int, int], ...]
    num_adapted: int
    grouped: Grouped | None = None

    @staticmethod
    def build(row_slots: list[int], device: torch.device) -> LoraBatch | None:
        """None when no row has an adapter."""
        adapted = [row for row, slot in enumerate(row_slots) if slot >= 0]
        if not adapted:
            return None
        adapted.sort(key=lambda row: row_slots[row])  # stable: rows of one slot keep their order
        segments: list[tuple[int, int, int]] = []
        for position, row in enumerate(adapted):
            slot = row_slots[row]
            if segments and segments[-1][0] == slot:
                segments[-1] = (slot, segments[-1][1], position + 1)
            else:
                segments.append((slot, position, position + 1))
        in_place = adapted == list(range(len(adapted)))
        order = None if in_place else torch.tensor(adapted, dtype=torch.long).to(device)
        slots = torch.tensor(row_slots, dtype=torch.long).to(device) if device.type == "cuda" else None
        grouped = _grouped(adapted, segments, len(row_slots), device) if len(segments) > 2 else None
        return LoraBatch(slots, order, tuple(segments), len(adapted), grouped)


def _grouped(
    adapted: list[int], segments: list[tuple[int, int, int]], num_rows: int, device: torch.device
) -> Grouped | None:
    first, last = segments[0][0], segments[-1][0]
    group = max(end - start for _, start, end in segments)
    num_slots = last - first + 1
    if num_slots * group > (1 + MAX_PADDING) * len(adapted):
        return None
    gather = [num_rows] * (num_slots * group)
    scatter = [0] * (num_slots * group)
    for slot, start, end in segments:
        base = (slot - first) * group
        gather[base : base + end - start] = adapted[start:end]
        scatter[base : base + end - start] = adapted[start:end]
    indices = torch.tensor(gather + scatter, dtype=torch.long).to(device)
    padded = num_slots * group != len(adapted)
    return Grouped(first, num_slots, group, indices[: len(gather)], indices[len(gather) :], padded)


def add_lora_(out: Tensor, x: Tensor, a: Tensor, b: Tensor, batch: LoraBatch) -> None:
    """out [N, out] += each adapted row's delta; x [N, in], a [S, R, in], b [S, out, R]."""
    if out.is_cuda:
        from museserve_kernels.lora import lora_expand_, lora_shrink

        assert batch.row_slots is not None, "built for this device"

        lora_expand_(out, lora_shrink(x, a, batch.row_slots), b, batch.row_slots)
        return
    grouped = batch.grouped
    if grouped is not None:
        source = torch.cat((x, x.new_zeros(1, x.shape[1]))) if grouped.padded else x
        rows = source.index_select(0, grouped.gather).view(grouped.num_slots, grouped.group, x.shape[1])
        slots = slice(grouped.first_slot, grouped.first_slot + grouped.num_slots)
        shrunk = torch.bmm(rows, a[slots].transpose(1, 2))  # [slots, group, R]
        delta = torch.bmm(shrunk, b[slots].transpose(1, 2))  # [slots, group, out]
        out.index_add_(0, grouped.scatter, delta.view(-1, out.shape[1]))
        return
    if batch.order is None:
        for slot, start, end in batch.segments:
            out[start:end].addmm_(x[start:end] @ a[slot].T, b[slot].T)
        return
    rows = x.index_select(0, batch.order)  # [M, in], by slot
    delta = torch.empty(batch.num_adapted, out.shape[1], dtype=out.dtype, device=out.device)
    for slot, start, end in batch.segments:
        torch.mm(rows[start:end] @ a[slot].T, b[slot].T, out=delta[start:end])
    out.index_add_(0, batch.order, delta)
