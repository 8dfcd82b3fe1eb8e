"""Rotary position embedding, applied in place to the queries and keys of a step.

Layout (Hugging Face Llama, "half split"): dimension i of a head pairs with i + head_dim/2.
cos/sin are [T, head_dim], one row per token at that token's position, with column i equal to
column i + head_dim/2 (the model builds them from the llama3-scaled inverse frequencies, so
long-context scaling is already in them); the kernel reads their first half.
Per pair: out_i = x_i cos_i - x_{i+h} sin_i, out_{i+h} = x_{i+h} cos_i + x_i sin_i.
q: [T, q_heads, head_dim], k: [T, kv_heads, head_dim]; cos/sin in q's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from museserve_kernels._launch import (
    FLOATS,
    check_dtype,
    check_shape,
    check_unit_stride,
    launcher,
    next_power_of_2,
    same_device,
)


@triton.jit
def rotary_kernel(
    q_ptr,  # [T, q_heads, head_dim], rotated in place
    k_ptr,  # [T, kv_heads, head_dim], rotated in place
    cos_ptr,  # [T, head_dim]
    sin_ptr,  # [T, head_dim]
    q_heads,
    kv_heads,
    half,  # head_dim // 2
    q_stride_t,
    q_stride_h,
    k_stride_t,
    k_stride_h,
    cos_stride_t,
    sin_stride_t,
    BLOCK_H: tl.constexpr,  # heads per tile
    BLOCK_D: tl.constexpr,  # >= half
):
    # Grid (T, 2): axis 1 picks the queries (0) or the keys (1) of token t.
    # Selected rather than branched on: an argument equal to 1 is specialised to a constant,
    # and the two branches of a runtime `if` must agree on types.
    t = tl.program_id(0).to(tl.int64)
    is_q = tl.program_id(1) == 0
    base = tl.where(is_q, q_ptr + t * q_stride_t, k_ptr + t * k_stride_t)
    heads = tl.where(is_q, q_heads, kv_heads)
    stride_h = tl.where(is_q, q_stride_h, k_stride_h)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < half
    cos = tl.load(cos_ptr + t * cos_stride_t + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + t * sin_stride_t + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    for h0 in range(0, heads, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        mask = (h < heads)[:, None] & d_mask[None, :]
        first = base + h[:, None] * stride_h + d[None, :]  # [BLOCK_H, BLOCK_D] pointers
        x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(first + half, mask=mask, other=0.0).to(tl.float32)
        tl.store(first, (x1 * cos - x2 * sin).to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(first + half, (x2 * cos + x1 * sin).to(q_ptr.dtype.element_ty), mask=mask)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [T, heads, head_dim] rotated, out of place: the exact semantics in torch."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat((-second, first), dim=-1)
    return x * cos[:, None, :] + rotated_half * sin[:, None, :]


def rotary_reference(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """(rotated q, rotated k), new tensors; queries and keys go through one set of ops."""
    q_heads, kv_heads = q.shape[1], k.shape[1]
    q_out, k_out = rotate(torch.cat((q, k), dim=1), cos, sin).split((q_heads, kv_heads), dim=1)
    return q_out, k_out


def rotary_(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotates q and k in place; returns them."""
    op = "rotary"
    check_dtype(op, "q", q, FLOATS)
    check_shape(op, "q", q, (None, None, None))
    tokens, q_heads, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"{op}: head_dim must be even, got {head_dim}")
    check_shape(op, "k", k, (tokens, None, head_dim))
    for name, t in (("cos", cos), ("sin", sin)):
        check_shape(op, name, t, (tokens, head_dim))
    for name, t in (("k", k), ("cos", cos), ("sin", sin)):
        if t.dtype != q.dtype:
            raise ValueError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_unit_stride(op, name, t)
    device = same_device(op, q=q, k=k, cos=cos, sin=sin)
    if tokens:
        block_d = next_power_of_2(head_dim // 2)
        block_h = max(1, min(next_power_of_2(max(q_heads, k.shape[1])), 4096 // block_d))
        launcher(rotary_kernel, device, op)[(tokens, 2)](
            q, k, cos, sin, q_heads, k.shape[1], head_dim // 2,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
            BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return q, k
