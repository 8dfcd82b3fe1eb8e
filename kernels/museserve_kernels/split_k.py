"""Split-K for paged decode: a row's keys shared among several programs, whose float32 partials
(each split's normalised output and log-sum-exp) `merge_splits_kernel` combines."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def merge_splits_kernel(
    out_ptr,  # [B, q_heads, head_dim]
    partial_ptr,  # [B, q_heads, num_splits, head_dim] float32, each split's normalised output
    lse_ptr,  # [B, q_heads, num_splits] float32, -inf for an empty split
    num_splits,
    head_dim,
    out_stride_b,
    out_stride_h,
    BLOCK_S: tl.constexpr,  # >= num_splits
    BLOCK_D: tl.constexpr,  # >= head_dim
):
    # Grid (B, q_heads): out = sum_s exp(lse_s - m) * partial_s / sum_s exp(lse_s - m), m = max lse.
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    row = b * tl.num_programs(1) + h
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(lse_ptr + row * num_splits + s, mask=s < num_splits, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every split empty (a row of 0 keys): weights all 0
    w = tl.exp(lse - m)  # [BLOCK_S], 0 for empty splits
    mask = (s < num_splits)[:, None] & (d < head_dim)[None, :]
    parts = tl.load(partial_ptr + (row * num_splits + s)[:, None] * head_dim + d[None, :], mask=mask, other=0.0)
    out = tl.sum(parts * w[:, None], axis=0) / tl.maximum(tl.sum(w, axis=0), 1e-30)
    tl.store(out_ptr + b * out_stride_b + h * out_stride_h + d, out.to(out_ptr.dtype.element_ty), mask=d < head_dim)


# Split-K: decode is one program per (row, kv head), so a small batch of long rows leaves most SMs
# idle while each program walks its whole context. Splitting a row's keys over num_splits programs
# (and merging their partials) fills the GPU. The choice reads static shapes only (batch, kv heads,
# table width): CUDA graphs capture the call, so it must not depend on context_lens' values.
H100_SMS = 132
SPLIT_MIN_KEYS = 512  # a full-width row gives each split at least this many keys
MAX_SPLITS = 64


def decode_splits(batch: int, kv_heads: int, width: int, sm_count: int) -> int:
    """Programs (batch * kv_heads) already at two per SM: 1. Else enough splits for two programs per
    SM, at most MAX_SPLITS, and at most width // SPLIT_MIN_KEYS (so tables under 1024 keys: 1)."""
    programs = max(1, batch * kv_heads)
    target = 2 * sm_count
    if programs >= target:
        return 1
    return max(1, min(MAX_SPLITS, -(-target // programs), width // SPLIT_MIN_KEYS))


def sm_count(device: torch.device) -> int:
    """A CUDA device's SMs; elsewhere (the interpreter, meta tensors) an H100's, so the choice is the one it makes."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H100_SMS
