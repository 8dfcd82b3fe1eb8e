"""Paged-attention prefill/extend: the new tokens of N sequences, each over all of its cached keys.

Semantics (the reference): sequence i owns rows query_starts[i]..query_starts[i + 1] - 1 of q,
its last num_new_i = query_starts[i + 1] - query_starts[i] positions: new row j sits at position
context_lens[i] - num_new_i + j and, causally, sees keys 0..that position. Position p lives at
slot block_tables[i, p // block_size] * block_size + p % block_size of the caches, the new
tokens' k/v included (written by kv_write first). Query head h reads kv head h // (q_heads //
kv_heads); softmax(q.k * scale) in float32, the weighted sum of the values rounded to q's dtype.
q: [T, q_heads, head_dim]; caches: [num_slots, kv_heads, head_dim]; block_tables: [N, max_blocks]
int; query_starts: [N + 1] int, non-decreasing from 0 to T; context_lens: [N] int, each at least
its num_new_i and at most max_blocks * block_size; block_size a power of two.
"""

from __future__ import annotations

import math

import torch
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
from museserve_kernels.paged_attention import attend_keys


@triton.jit
def paged_prefill_kernel(
    out_ptr,  # [T, q_heads, head_dim]
    q_ptr,  # [T, q_heads, head_dim]
    key_cache_ptr,  # [num_slots, kv_heads, head_dim]
    value_cache_ptr,  # [num_slots, kv_heads, head_dim]
    block_tables_ptr,  # [N, max_blocks]
    query_starts_ptr,  # [N + 1]
    context_lens_ptr,  # [N]
    scale,
    group,  # q_heads // kv_heads
    head_dim,
    q_stride_t,
    q_stride_h,
    out_stride_t,
    out_stride_h,
    kc_stride_s,
    kc_stride_h,
    vc_stride_s,
    vc_stride_h,
    bt_stride_b,
    BLOCK_SIZE: tl.constexpr,  # the cache's block size, a power of two
    BLOCK_G: tl.constexpr,  # >= group, a power of two
    BLOCK_Q: tl.constexpr,  # new tokens per tile; BLOCK_Q * BLOCK_G >= 16 (tl.dot's smallest M)
    BLOCK_D: tl.constexpr,  # >= head_dim
    BLOCK_N: tl.constexpr,  # keys per step, a multiple of 16
    UPCAST: tl.constexpr,  # dots in float32: float32 caches, and always in the interpreter
):
    # Grid (cdiv(max_query_len, BLOCK_Q), N, kv_heads): the tiles on axis 0, which has no 65535
    # limit, and neighbours there read the same keys. Tile row r is new token q_lo + r // BLOCK_G
    # of the sequence with query head kvh * group + r % BLOCK_G: the group's heads share each key
    # read. Keys are read up to the tile's last query position only (causal early exit).
    q_lo = tl.program_id(0) * BLOCK_Q
    seq = tl.program_id(1).to(tl.int64)
    kvh = tl.program_id(2).to(tl.int64)
    first_row = tl.load(query_starts_ptr + seq).to(tl.int64)
    num_new = (tl.load(query_starts_ptr + seq + 1) - first_row).to(tl.int32)
    if q_lo < num_new:  # tiles past this sequence's new tokens (a shorter one than the longest) idle
        length = tl.load(context_lens_ptr + seq).to(tl.int32)
        r = tl.arange(0, BLOCK_Q * BLOCK_G)
        i = q_lo + r // BLOCK_G  # [BLOCK_Q * BLOCK_G] index among the new tokens
        g = r % BLOCK_G
        d = tl.arange(0, BLOCK_D)
        rows = first_row + i
        heads = kvh * group + g
        mask = ((i < num_new) & (g < group))[:, None] & (d < head_dim)[None, :]
        q = tl.load(q_ptr + rows[:, None] * q_stride_t + heads[:, None] * q_stride_h + d[None, :], mask=mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        first_pos = length - num_new  # position of new token 0
        hi = tl.minimum(first_pos + q_lo + BLOCK_Q, length)  # one past the tile's last query position
        acc, _, l_i = attend_keys(
            q, first_pos + i + 1, 0, hi, block_tables_ptr + seq * bt_stride_b, key_cache_ptr + kvh * kc_stride_h,
            value_cache_ptr + kvh * vc_stride_h, kc_stride_s, vc_stride_s, head_dim, scale,
            BLOCK_SIZE, BLOCK_Q * BLOCK_G, BLOCK_D, BLOCK_N, UPCAST, True,
        )  # fmt: skip
        out = acc / tl.maximum(l_i, 1e-30)[:, None]  # every stored row saw key 0 at least: l_i > 0
        tl.store(
            out_ptr + rows[:, None] * out_stride_t + heads[:, None] * out_stride_h + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


def paged_prefill_reference(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    query_starts: Tensor,
    context_lens: Tensor,
    block_size: int,
    scale: float | None = None,
) -> Tensor:
    """[T, q_heads, head_dim] in q's dtype, one sequence at a time (reads query_starts and
    context_lens on the host)."""
    q_heads, head_dim = q.shape[1], q.shape[2]
    group = q_heads // key_cache.shape[1]
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.empty_like(q)
    starts, lengths = query_starts.tolist(), context_lens.tolist()
    for i, length in enumerate(lengths):
        first, end = starts[i], starts[i + 1]
        if first == end:
            continue
        pos = torch.arange(length, device=q.device)
        slots = block_tables[i].long()[pos // block_size] * block_size + pos % block_size
        keys = key_cache.index_select(0, slots).float().repeat_interleave(group, dim=1)  # [L, q_heads, d]
        values = value_cache.index_select(0, slots).float().repeat_interleave(group, dim=1)
        query_pos = pos[length - (end - first) :]  # [num_new]: the new tokens are the last positions
        scores = torch.einsum("thd,khd->htk", q[first:end].float(), keys) * scale  # [q_heads, num_new, L]
        scores = scores.masked_fill(pos[None, None, :] > query_pos[None, :, None], float("-inf"))
        out[first:end] = torch.einsum("htk,khd->thd", scores.softmax(dim=-1), values).to(q.dtype)
    return out


def paged_prefill(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    query_starts: Tensor,
    context_lens: Tensor,
    block_size: int,
    max_query_len: int,
    scale: float | None = None,
) -> Tensor:
    """A new [T, q_heads, head_dim] tensor. max_query_len: the most new tokens of any one sequence
    (a host int, so the grid needs no sync); rows of a sequence past it are left unwritten.
    query_starts and context_lens are not range-checked (that would need a host sync)."""
    op = "paged_prefill"
    tokens, q_heads, head_dim, kv_heads = check_paged_attention(op, q, key_cache, value_cache, block_size)
    check_dtype(op, "block_tables", block_tables, INDICES)
    check_shape(op, "block_tables", block_tables, (None, None))
    num_seqs = block_tables.shape[0]
    check_dtype(op, "query_starts", query_starts, INDICES)
    check_shape(op, "query_starts", query_starts, (num_seqs + 1,))
    check_dtype(op, "context_lens", context_lens, INDICES)
    check_shape(op, "context_lens", context_lens, (num_seqs,))
    if isinstance(max_query_len, bool) or not isinstance(max_query_len, int) or max_query_len < int(tokens > 0):
        raise ValueError(f"{op}: max_query_len must be a host int >= 1 (0 for no tokens), got {max_query_len!r}")
    for name, t in (
        ("q", q), ("key_cache", key_cache), ("value_cache", value_cache), ("block_tables", block_tables),
        ("query_starts", query_starts), ("context_lens", context_lens),
    ):  # fmt: skip
        check_unit_stride(op, name, t)
    device = same_device(
        op, q=q, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
        query_starts=query_starts, context_lens=context_lens,
    )  # fmt: skip
    out = torch.empty_like(q)
    if tokens == 0 or num_seqs == 0:
        return out
    group = q_heads // kv_heads
    block_g = next_power_of_2(group)
    # Tiles of up to 128 rows (new tokens x the group's heads), fewer for short chunks; >= 16 for
    # tl.dot. Float32 dots run on FMA units, each thread holding whole rows of q: past 32 rows (8
    # warps) or 16 rows (4 warps) they spill on sm_90a; 16-bit tiles of 128 rows need 8 warps.
    wide = q.dtype == torch.float32
    block_r = max(block_g, min(32 if wide else 128, max(16, block_g * next_power_of_2(max_query_len))))
    block_d = max(16, next_power_of_2(head_dim))
    # Key tiles of ~16 KiB, at most 64 keys: smaller for float32 and wide heads.
    block_n = max(16, min(64, 16384 // (block_d * q.element_size())))
    upcast = q.dtype == torch.float32 or is_interpreted(paged_prefill_kernel)
    grid = (triton.cdiv(max_query_len, block_r // block_g), num_seqs, kv_heads)
    launcher(paged_prefill_kernel, device, op)[grid](
        out, q, key_cache, value_cache, block_tables, query_starts, context_lens,
        float(scale if scale is not None else 1.0 / math.sqrt(head_dim)), group, head_dim,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), value_cache.stride(0), value_cache.stride(1), block_tables.stride(0),
        BLOCK_SIZE=block_size, BLOCK_G=block_g, BLOCK_Q=block_r // block_g, BLOCK_D=block_d, BLOCK_N=block_n,
        UPCAST=upcast, num_warps=8 if block_r >= (32 if wide else 64) else 4, num_stages=2,
    )  # fmt: skip
    return out
