"""Batched multi-adapter LoRA (punica's BGMV): every row of a batch may use a different adapter, named
by its slot in stacked adapter weights, and applied in two steps.

Semantics (the references): with s = row_slots[n],
  shrink: t[n] = lora_a[s] @ x[n] in float32 (zeros where s < 0);
  expand: out[n] += lora_b[s] @ t[n], the sum in float32 rounded once to out's dtype (rows with s < 0
          untouched).
x: [N, IN]; lora_a: [S, R, IN] of x's dtype; row_slots: [N] int, -1 for a row without an adapter;
t: [N, R] float32; out: [N, OUT] (rows may be strided, as a column slice of a fused projection);
lora_b: [S, OUT, R] of out's dtype; R >= 1 (typically 8..64). Slots are not range-checked (that would need a
host sync): a slot >= S reads past the weights. A scaling factor belongs in lora_b (or in t).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from museserve_kernels._launch import (
    FLOATS,
    INDICES,
    check_dtype,
    check_shape,
    check_unit_stride,
    launcher,
    next_power_of_2,
    same_device,
    warps_for,
)

MAX_BLOCK_R = 64  # expand reads a row's t in chunks of at most this many ranks (one chunk up to rank 64)


@triton.jit
def lora_shrink_kernel(
    t_ptr,  # [N, R] float32
    x_ptr,  # [N, IN]
    lora_a_ptr,  # [S, R, IN]
    row_slots_ptr,  # [N]
    rank,
    in_features,
    t_stride,
    x_stride,
    a_stride_s,
    a_stride_r,
    BLOCK_R: tl.constexpr,  # ranks per program, a power of two
    BLOCK_K: tl.constexpr,  # input features per step, a power of two
):
    # Grid (N, cdiv(R, BLOCK_R)): ranks r0..r0 + BLOCK_R - 1 of row n, over IN in BLOCK_K steps.
    n = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < rank
    slot = tl.load(row_slots_ptr + n).to(tl.int64)
    if slot >= 0:
        k = tl.arange(0, BLOCK_K)
        a_rows = lora_a_ptr + slot * a_stride_s + r[:, None] * a_stride_r  # [BLOCK_R, 1]
        acc = tl.zeros([BLOCK_R, BLOCK_K], tl.float32)  # per-lane partial sums, reduced once at the end
        for k0 in range(0, in_features, BLOCK_K):
            cols = k0 + k
            k_mask = cols < in_features
            # Upcast right after each load: bf16 arithmetic is wrong in the interpreter.
            xk = tl.load(x_ptr + n * x_stride + cols, mask=k_mask, other=0.0).to(tl.float32)
            a = tl.load(a_rows + cols[None, :], mask=r_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
            acc += a * xk[None, :]
        tl.store(t_ptr + n * t_stride + r, tl.sum(acc, axis=1), mask=r_mask)
    else:  # no adapter: t[n] is zeros
        tl.store(t_ptr + n * t_stride + r, tl.zeros([BLOCK_R], tl.float32), mask=r_mask)


@triton.jit
def lora_expand_kernel(
    out_ptr,  # [N, OUT], updated in place
    t_ptr,  # [N, R] float32
    lora_b_ptr,  # [S, OUT, R]
    row_slots_ptr,  # [N]
    rank,
    out_features,
    out_stride,
    t_stride,
    b_stride_s,
    b_stride_o,
    BLOCK_O: tl.constexpr,  # output features per program, a power of two
    BLOCK_R: tl.constexpr,  # ranks per step, a power of two (>= rank up to rank 64: one step)
):
    # Grid (N, cdiv(OUT, BLOCK_O)): outputs o0..o0 + BLOCK_O - 1 of row n; a row without an adapter is left as is.
    n = tl.program_id(0).to(tl.int64)
    slot = tl.load(row_slots_ptr + n).to(tl.int64)
    if slot >= 0:
        o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
        o_mask = o < out_features
        b_rows = lora_b_ptr + slot * b_stride_s + o[:, None] * b_stride_o  # [BLOCK_O, 1]
        delta = tl.zeros([BLOCK_O], tl.float32)
        for r0 in range(0, rank, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            r_mask = r < rank
            tn = tl.load(t_ptr + n * t_stride + r, mask=r_mask, other=0.0).to(tl.float32)  # [BLOCK_R]
            b = tl.load(b_rows + r[None, :], mask=o_mask[:, None] & r_mask[None, :], other=0.0).to(tl.float32)
            delta += tl.sum(b * tn[None, :], axis=1)  # [BLOCK_O]
        out_ptrs = out_ptr + n * out_stride + o
        acc = tl.load(out_ptrs, mask=o_mask, other=0.0).to(tl.float32) + delta
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def reference_shrink(x: Tensor, lora_a: Tensor, row_slots: Tensor) -> Tensor:
    """A new [N, R] float32 tensor. Each row against every adapter ([N, S * R]), then its own slot's R
    columns: one matmul and no gather of [N, R, IN] weights."""
    rows = x.shape[0]
    slots, rank, in_features = lora_a.shape
    live = row_slots >= 0
    every = x.float() @ lora_a.float().reshape(slots * rank, in_features).T  # [N, S * R]
    own = row_slots.clamp(min=0).long()[:, None, None].expand(rows, 1, rank)
    t = every.view(rows, slots, rank).gather(1, own).squeeze(1)  # [N, R]
    return t.masked_fill(~live[:, None], 0.0)


def reference_expand_(out: Tensor, t: Tensor, lora_b: Tensor, row_slots: Tensor) -> None:
    """In place into out. Each row's t is placed at its slot's R columns of an [N, S * R] float32
    matrix of zeros, against every adapter's B side by side ([OUT, S * R]): one matmul."""
    rows, rank = t.shape
    slots, out_features, _ = lora_b.shape
    live = row_slots >= 0
    own = row_slots.clamp(min=0).long()[:, None, None].expand(rows, 1, rank)
    placed = torch.zeros(rows, slots, rank, dtype=torch.float32, device=t.device)
    placed.scatter_(1, own, t.float().masked_fill(~live[:, None], 0.0)[:, None, :])
    side_by_side = lora_b.float().permute(1, 0, 2).reshape(out_features, slots * rank)  # [OUT, S * R]
    updated = (out.float() + placed.view(rows, slots * rank) @ side_by_side.T).to(out.dtype)
    out.copy_(torch.where(live[:, None], updated, out))


def _check_slots(op: str, row_slots: Tensor, rows: int) -> None:
    check_dtype(op, "row_slots", row_slots, INDICES)
    check_shape(op, "row_slots", row_slots, (rows,))
    check_unit_stride(op, "row_slots", row_slots)


def _check_rank(op: str, rank: int) -> None:
    if rank < 1:
        raise ValueError(f"{op}: the LoRA rank must be at least 1, got {rank}")


def lora_shrink(x: Tensor, lora_a: Tensor, row_slots: Tensor) -> Tensor:
    """A new [N, R] float32 tensor: t[n] = lora_a[row_slots[n]] @ x[n], zeros where row_slots[n] < 0."""
    op = "lora_shrink"
    check_dtype(op, "x", x, FLOATS)
    check_shape(op, "x", x, (None, None))
    rows, in_features = x.shape
    check_shape(op, "lora_a", lora_a, (None, None, in_features))
    if lora_a.dtype != x.dtype:
        raise ValueError(f"{op}: lora_a must have x's dtype {x.dtype}, got {lora_a.dtype}")
    rank = lora_a.shape[1]
    _check_rank(op, rank)
    _check_slots(op, row_slots, rows)
    check_unit_stride(op, "x", x)
    check_unit_stride(op, "lora_a", lora_a)
    device = same_device(op, x=x, lora_a=lora_a, row_slots=row_slots)
    t = torch.empty((rows, rank), dtype=torch.float32, device=device)
    if rows:
        block_r = min(16, next_power_of_2(rank))
        # Tiles of ~4096 weights: BLOCK_K 256 at BLOCK_R 16.
        block_k = max(16, min(next_power_of_2(in_features), 4096 // block_r))
        launcher(lora_shrink_kernel, device, op)[(rows, triton.cdiv(rank, block_r))](
            t, x, lora_a, row_slots, rank, in_features,
            t.stride(0), x.stride(0), lora_a.stride(0), lora_a.stride(1),
            BLOCK_R=block_r, BLOCK_K=block_k, num_warps=warps_for(block_r * block_k),
        )  # fmt: skip
    return t


def lora_expand_(out: Tensor, t: Tensor, lora_b: Tensor, row_slots: Tensor) -> None:
    """In place: out[n] += lora_b[row_slots[n]] @ t[n] (in float32, rounded once to out's dtype); rows
    with row_slots[n] < 0 untouched. `out` may be a row-strided view (unit stride in its last dimension)."""
    op = "lora_expand_"
    check_dtype(op, "out", out, FLOATS)
    check_shape(op, "out", out, (None, None))
    rows, out_features = out.shape
    check_dtype(op, "t", t, (torch.float32,))
    check_shape(op, "t", t, (rows, None))
    rank = t.shape[1]
    _check_rank(op, rank)
    check_shape(op, "lora_b", lora_b, (None, out_features, rank))
    if lora_b.dtype != out.dtype:
        raise ValueError(f"{op}: lora_b must have out's dtype {out.dtype}, got {lora_b.dtype}")
    _check_slots(op, row_slots, rows)
    for name, tensor in (("out", out), ("t", t), ("lora_b", lora_b)):
        check_unit_stride(op, name, tensor)
    device = same_device(op, out=out, t=t, lora_b=lora_b, row_slots=row_slots)
    if rows and out_features:
        block_r = min(MAX_BLOCK_R, next_power_of_2(rank))
        # Tiles of ~4096 weights: BLOCK_O 256 at rank 16, 64 from rank 64.
        block_o = max(16, min(next_power_of_2(out_features), 4096 // block_r))
        launcher(lora_expand_kernel, device, op)[(rows, triton.cdiv(out_features, block_o))](
            out, t, lora_b, row_slots, rank, out_features,
            out.stride(0), t.stride(0), lora_b.stride(0), lora_b.stride(1),
            BLOCK_O=block_o, BLOCK_R=block_r, num_warps=warps_for(block_o * block_r),
        )  # fmt: skip
