"""Paged-attention decode: one new query token per sequence over that sequence's cached keys.

Semantics (the reference): for sequence b and query head h, with kv head h // (q_heads //
kv_heads), attend q[b, h] to the keys of positions 0..context_lens[b] - 1, where position p
lives at slot block_tables[b, p // block_size] * block_size + p % block_size of the caches;
softmax(q.k * scale) in float32, then the weighted sum of the values, rounded to q's dtype.
q: [B, q_heads, head_dim]; caches: [num_slots, kv_heads, head_dim]; block_tables: [B, max_blocks]
int; context_lens: [B] int, each in 1..max_blocks * block_size; block_size a power of two.
A small batch over wide tables runs split-K (`split_k.decode_splits`): each row's keys are shared among
several programs, whose float32 partials `merge_splits_kernel` combines into the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from museserve_kernels._launch import (
    INDICES,
    check_dtype,
    check_paged_attention,
    check_shape,
    check_unit_stride,
    is_interpreted,
    launcher,
    next_power_of_2,
    same_device,
)
from museserve_kernels.split_k import decode_splits, merge_splits_kernel, sm_count


@triton.jit
def attend_keys(
    q,  # [BLOCK_R, BLOCK_D] query rows of one kv head (float32 when UPCAST)
    visible_to,  # [BLOCK_R] int: with CAUSAL, row r sees positions < visible_to[r] only
    lo,  # positions lo..hi - 1 are read
    hi,
    table_ptr,  # this sequence's row of the block table
    key_ptr,  # the caches, already offset to the kv head
    value_ptr,
    kc_stride_s,
    vc_stride_s,
    head_dim,
    scale,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """(acc [BLOCK_R, BLOCK_D], m [BLOCK_R], l [BLOCK_R]), float32: the unnormalised weighted sum of
    the values, the scores' running max and sum(exp(score - m)). A range of no keys gives (0, -inf, 0)."""
    d = tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_mask = (d < head_dim)[None, :]
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        pos = start + n  # [BLOCK_N] positions in the sequence
        live = pos < hi
        block = tl.load(table_ptr + pos // BLOCK_SIZE, mask=live, other=0).to(tl.int64)
        slot = block * BLOCK_SIZE + pos % BLOCK_SIZE
        kv_mask = live[:, None] & d_mask
        k = tl.load(key_ptr + slot[:, None] * kc_stride_s + d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(value_ptr + slot[:, None] * vc_stride_s + d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_R, BLOCK_N], float32
        if CAUSAL:
            scores = tl.where(pos[None, :] < visible_to[:, None], scores, float("-inf"))
        else:
            scores = tl.where(live[None, :], scores, float("-inf"))
        # The first tile of a range holds a visible key for every row: m_new is finite from then on.
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def paged_decode_kernel(
    out_ptr,  # [B, q_heads, head_dim] (num_splits == 1), or partial [B, q_heads, num_splits, head_dim] float32
    lse_ptr,  # [B, q_heads, num_splits] float32: each split's log-sum-exp of its scores, -inf if empty
    q_ptr,  # [B, q_heads, head_dim]
    key_cache_ptr,  # [num_slots, kv_heads, head_dim]
    value_cache_ptr,  # [num_slots, kv_heads, head_dim]
    block_tables_ptr,  # [B, max_blocks]
    context_lens_ptr,  # [B]
    scale,
    group,  # q_heads // kv_heads
    head_dim,
    num_splits,
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
    SPLIT: tl.constexpr,  # write float32 partials and their log-sum-exp for `merge_splits_kernel`
):
    # Grid (B, kv_heads, num_splits): the `group` query heads sharing kv head `kvh` are the rows of
    # one tile, so each key is read once for all of them. Split s of a row of `length` keys covers
    # its own BLOCK_N-aligned share of that length (so every split of a long row has work, whatever
    # the table width); splits past the row's end are empty.
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1).to(tl.int64)
    s = tl.program_id(2)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kvh * group + g
    q_mask = (g < group)[:, None] & (d < head_dim)[None, :]
    q = tl.load(q_ptr + b * q_stride_b + heads[:, None] * q_stride_h + d[None, :], mask=q_mask, other=0.0)
    if UPCAST:  # [BLOCK_G, BLOCK_D]
        q = q.to(tl.float32)
    length = tl.load(context_lens_ptr + b).to(tl.int32)
    share = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N) * BLOCK_N
    lo = s * share
    hi = tl.minimum(lo + share, length)
    acc, m_i, l_i = attend_keys(
        q, g, lo, hi, block_tables_ptr + b * bt_stride_b, key_cache_ptr + kvh * kc_stride_h,
        value_cache_ptr + kvh * vc_stride_h, kc_stride_s, vc_stride_s, head_dim, scale,
        BLOCK_SIZE, BLOCK_G, BLOCK_D, BLOCK_N, UPCAST, False,
    )  # fmt: skip
    out = acc / tl.maximum(l_i, 1e-30)[:, None]  # a context of 0 keys gives zeros, not NaN
    if SPLIT:
        row = (b * group * tl.num_programs(1) + heads) * num_splits + s  # [BLOCK_G] (b, head, s)
        lse = tl.where(l_i > 0, m_i + tl.log(tl.maximum(l_i, 1e-30)), float("-inf"))  # [BLOCK_G]
        # Stored from column 0 of a [BLOCK_G, BLOCK_D] tile in out's layout: a 1-D store of the row
        # statistics makes ptxas spill the float32 (FMA-dot) build heavily.
        lse_tile = tl.broadcast_to(lse[:, None], (BLOCK_G, BLOCK_D))
        tl.store(lse_ptr + row[:, None] + 0 * d[None, :], lse_tile, mask=q_mask & (d == 0)[None, :])
        tl.store(out_ptr + row[:, None] * head_dim + d[None, :], out, mask=q_mask)
    else:
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
    batch, q_heads, head_dim, kv_heads = check_paged_attention(op, q, key_cache, value_cache, block_size)
    check_dtype(op, "block_tables", block_tables, INDICES)
    check_shape(op, "block_tables", block_tables, (batch, None))
    check_dtype(op, "context_lens", context_lens, INDICES)
    check_shape(op, "context_lens", context_lens, (batch,))
    for name, t in (
        ("q", q), ("key_cache", key_cache), ("value_cache", value_cache), ("block_tables", block_tables),
        ("context_lens", context_lens),
    ):  # fmt: skip
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
    splits = decode_splits(batch, kv_heads, block_tables.shape[1] * block_size, sm_count(device))
    target, lse = out, out  # lse is unused (never stored to) on the single-kernel path
    if splits > 1:
        target = torch.empty((batch, q_heads, splits, head_dim), dtype=torch.float32, device=device)
        lse = torch.empty((batch, q_heads, splits), dtype=torch.float32, device=device)
    launcher(paged_decode_kernel, device, op)[(batch, kv_heads, splits)](
        target, lse, q, key_cache, value_cache, block_tables, context_lens,
        float(scale if scale is not None else 1.0 / math.sqrt(head_dim)), group, head_dim, splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), value_cache.stride(0), value_cache.stride(1), block_tables.stride(0),
        BLOCK_SIZE=block_size, BLOCK_G=max(16, next_power_of_2(group)), BLOCK_D=block_d, BLOCK_N=block_n,
        UPCAST=upcast, SPLIT=splits > 1, num_warps=4, num_stages=2,
    )  # fmt: skip
    if splits > 1:
        launcher(merge_splits_kernel, device, op)[(batch, q_heads)](
            out, target, lse, splits, head_dim, out.stride(0), out.stride(1),
            BLOCK_S=next_power_of_2(splits), BLOCK_D=block_d, num_warps=max(1, min(4, block_d // 32)), num_stages=1,
        )  # fmt: skip
    return out
