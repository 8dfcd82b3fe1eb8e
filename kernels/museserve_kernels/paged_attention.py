"""Paged-attention decode: one new query token per sequence over that sequence's cached keys.

Semantics (the reference): for sequence b and query head h, with kv head h // (q_heads //
kv_heads), attend q[b, h] to the keys of positions 0..context_lens[b] - 1, where position p
lives at slot block_tables[b, p // block_size] * block_size + p % block_size of the caches;
softmax(q.k * scale) in float32, then the weighted sum of the values, rounded to q's dtype.
q: [B, q_heads, head_dim]; caches: [num_slots, kv_heads, head_dim]; block_tables: [B, max_blocks]
int; context_lens: [B] int, each in 1..max_blocks * block_size; block_size a power of two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from museserve_kernels._launch import (
    FLOATS,
    INDICES,
    check_dtype,
    check_shape,
    check_unit_stride,
    is_interpreted,
    launcher,
    next_power_of_2,
    same_device,
)


@triton.jit
def paged_decode_kernel(
    out_ptr,  # [B, q_heads, head_dim]
    q_ptr,  # [B, q_heads, head_dim]
    key_cache_ptr,  # [num_slots, kv_heads, head_dim]
    value_cache_ptr,  # [num_slots, kv_heads, head_dim]
    block_tables_ptr,  # [B, max_blocks]
    context_lens_ptr,  # [B]
    scale,
    group,  # q_heads // kv_heads
    head_dim,
    q_stride_b,
    q_stride_h,
    out_stride_b,
    out_stride_h,
    kc_stride_s,
    kc_stride_h,
    vc_stride_s,
    vc_stride_h,
    bt_stride_b,
    BLOCK_SIZE: tl.constexpr,  # the cache's block size, a power of two
    BLOCK_G: tl.constexpr,  # >= group and >= 16 (tl.dot's smallest M)
    BLOCK_D: tl.constexpr,  # >= head_dim
    BLOCK_N: tl.constexpr,  # keys per step, a multiple of 16
    UPCAST: tl.constexpr,  # dots in float32: float32 caches, and always in the interpreter
):
    # Grid (B, kv_heads): the `group` query heads sharing kv head `kvh` are the rows of one tile,
    # so each key is read once for all of them. Online softmax over key tiles, all in float32.
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    heads = kvh * group + g
    q_mask = (g < group)[:, None] & (d < head_dim)[None, :]
    q = tl.load(q_ptr + b * q_stride_b + heads[:, None] * q_stride_h + d[None, :], mask=q_mask, other=0.0)
    if UPCAST:  # [BLOCK_G, BLOCK_D]
        q = q.to(tl.float32)
    length = tl.load(context_lens_ptr + b).to(tl.int32)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max of the scores
    l_i = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp(score - m_i)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    d_mask = (d < head_dim)[None, :]
    for start in range(0, length, BLOCK_N):
        pos = start + n  # [BLOCK_N] positions in the sequence
        live = pos < length
        block = tl.load(block_tables_ptr + b * bt_stride_b + pos // BLOCK_SIZE, mask=live, other=0).to(tl.int64)
        slot = block * BLOCK_SIZE + pos % BLOCK_SIZE
        kv_mask = live[:, None] & d_mask
        k = tl.load(
            key_cache_ptr + slot[:, None] * kc_stride_s + kvh * kc_stride_h + d[None, :], mask=kv_mask, other=0.0
        )
        v = tl.load(
            value_cache_ptr + slot[:, None] * vc_stride_s + kvh * vc_stride_h + d[None, :], mask=kv_mask, other=0.0
        )
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_G, BLOCK_N], float32
        scores = tl.where(live[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    out = acc / tl.maximum(l_i, 1e-30)[:, None]  # a context of 0 keys gives zeros, not NaN
    tl.store(
        out_ptr + b * out_stride_b + heads[:, None] * out_stride_h + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=q_mask,
    )


def decode_gather_index(block_tables: Tensor, context_lens: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """What the reference reads, for W = max_blocks * block_size: (slots [B * W] long, where row b's
    position p is at b * W + p; live [B, W] bool, p < context_lens[b]). Positions past a row's
    length read slot 0 and are masked: table entries past a sequence's blocks may be anything."""
    batch = block_tables.shape[0]
    width = block_tables.shape[1] * block_size
    device = block_tables.device
    slots = (block_tables.long()[:, :, None] * block_size + torch.arange(block_size, device=device)).view(batch, -1)
    live = torch.arange(width, device=device)[None, :] < context_lens[:, None]
    return slots.masked_fill(~live, 0).flatten(), live


def paged_decode_reference(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    block_size: int,
    scale: float | None = None,
    gather: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """[B, q_heads, head_dim] in q's dtype. Attends over the whole table width, masked past each length.
    `gather`: `decode_gather_index` of these tables, when the caller keeps it for several calls."""
    batch, q_heads, head_dim = q.shape
    kv_heads = key_cache.shape[1]
    width = block_tables.shape[1] * block_size
    slots, own = gather if gather is not None else decode_gather_index(block_tables, context_lens, block_size)
    keys = key_cache.index_select(0, slots).view(batch, width, kv_heads, head_dim)
    values = value_cache.index_select(0, slots).view(batch, width, kv_heads, head_dim)
    dtype = torch.float32  # softmax in float32; a float32 model pays no copy here
    # One query per sequence, so the `group` query heads that share a kv head stand as that head's
    # query rows: exact, and no GQA broadcast needed.
    out = F.scaled_dot_product_attention(
        q.to(dtype).view(batch, kv_heads, q_heads // kv_heads, head_dim),  # [B, kv_heads, group, d]
        keys.to(dtype).transpose(1, 2),  # [B, kv_heads, W, d]
        values.to(dtype).transpose(1, 2),
        attn_mask=own[:, None, None, :],
        scale=scale,
    )
    return out.reshape(batch, q_heads, head_dim).to(q.dtype)


def paged_decode(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    block_size: int,
    scale: float | None = None,
) -> Tensor:
    """A new [B, q_heads, head_dim] tensor. context_lens are not range-checked (that would need a
    host sync): lengths past the table read whatever slots the table's padding names."""
    op = "paged_decode"
    check_dtype(op, "q", q, FLOATS)
    check_shape(op, "q", q, (None, None, None))
    batch, q_heads, head_dim = q.shape
    check_shape(op, "key_cache", key_cache, (None, None, head_dim))
    check_shape(op, "value_cache", value_cache, tuple(key_cache.shape))
    kv_heads = key_cache.shape[1]
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{op}: q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        if t.dtype != q.dtype:
            raise ValueError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    check_dtype(op, "block_tables", block_tables, INDICES)
    check_shape(op, "block_tables", block_tables, (batch, None))
    check_dtype(op, "context_lens", context_lens, INDICES)
    check_shape(op, "context_lens", context_lens, (batch,))
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"{op}: block_size must be a power of two, got {block_size}")
    for name, t in (("q", q), ("key_cache", key_cache), ("value_cache", value_cache), ("block_tables", block_tables)):
        check_unit_stride(op, name, t)
    device = same_device(
        op, q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables, context_lens=context_lens
    )
    out = torch.empty_like(q)
    if batch == 0:
        return out
    group = q_heads // kv_heads
    block_d = max(16, next_power_of_2(head_dim))
    upcast = q.dtype == torch.float32 or is_interpreted(paged_decode_kernel)
    # Key tiles of ~16 KiB: smaller for float32 and wide heads, never under one tl.dot's 16 rows.
    block_n = max(16, min(128, (16384 // (block_d * q.element_size()))))
    launcher(paged_decode_kernel, device, op)[(batch, kv_heads)](
        out, q, key_cache, value_cache, block_tables, context_lens,
        float(scale if scale is not None else 1.0 / math.sqrt(head_dim)), group, head_dim,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), value_cache.stride(0), value_cache.stride(1), block_tables.stride(0),
        BLOCK_SIZE=block_size, BLOCK_G=max(16, next_power_of_2(group)), BLOCK_D=block_d, BLOCK_N=block_n,
        UPCAST=upcast, num_warps=4, num_stages=2,
    )  # fmt: skip
    return out
