"""KV-cache write: each new token's key and value rows go to its slot of the paged cache.

Caches are [num_slots, kv_heads, head_dim] (slot = block_id * block_size + offset in block);
k, v are [T, kv_heads, head_dim]; slot_mapping is [T] int, and a negative slot (-1, padding)
means "write nothing for this token". Slots must be distinct among the tokens written.
"""

from __future__ import annotations

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
)


@triton.jit
def kv_write_kernel(
    k_ptr,  # [T, kv_heads, head_dim]
    v_ptr,  # [T, kv_heads, head_dim]
    key_cache_ptr,  # [num_slots, kv_heads, head_dim]
    value_cache_ptr,  # [num_slots, kv_heads, head_dim]
    slot_mapping_ptr,  # [T]
    kv_heads,
    head_dim,
    k_stride_t,
    k_stride_h,
    v_stride_t,
    v_stride_h,
    kc_stride_s,
    kc_stride_h,
    vc_stride_s,
    vc_stride_h,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Grid (T,): one token's rows per program; the slot is int64 so slot * stride cannot overflow.
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + t).to(tl.int64)
    if slot >= 0:  # a negative slot pads the batch: nothing to write
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        mask = (h < kv_heads) & (d < head_dim)
        key = tl.load(k_ptr + t * k_stride_t + h * k_stride_h + d, mask=mask)
        value = tl.load(v_ptr + t * v_stride_t + h * v_stride_h + d, mask=mask)
        tl.store(key_cache_ptr + slot * kc_stride_s + h * kc_stride_h + d, key, mask=mask)
        tl.store(value_cache_ptr + slot * vc_stride_s + h * vc_stride_h + d, value, mask=mask)


def kv_write_reference(k: Tensor, v: Tensor, key_cache: Tensor, value_cache: Tensor, slot_mapping: Tensor) -> None:
    """In place into key_cache/value_cache. (The boolean mask syncs with the host on a GPU; the kernel does not.)"""
    written = slot_mapping >= 0
    slots = slot_mapping[written]
    key_cache.index_copy_(0, slots, k[written])
    value_cache.index_copy_(0, slots, v[written])


def kv_write(k: Tensor, v: Tensor, key_cache: Tensor, value_cache: Tensor, slot_mapping: Tensor) -> None:
    op = "kv_write"
    check_dtype(op, "key_cache", key_cache, FLOATS)
    check_shape(op, "key_cache", key_cache, (None, None, None))
    _, kv_heads, head_dim = key_cache.shape
    check_shape(op, "value_cache", value_cache, tuple(key_cache.shape))
    check_dtype(op, "slot_mapping", slot_mapping, INDICES)
    check_shape(op, "slot_mapping", slot_mapping, (None,))
    tokens = slot_mapping.shape[0]
    for name, t in (("k", k), ("v", v)):
        check_shape(op, name, t, (tokens, kv_heads, head_dim))
    for name, t in (("k", k), ("v", v), ("value_cache", value_cache)):
        if t.dtype != key_cache.dtype:
            raise ValueError(f"{op}: {name} must have the cache's dtype {key_cache.dtype}, got {t.dtype}")
    for name, t in (("k", k), ("v", v), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_unit_stride(op, name, t)
    device = same_device(op, k=k, v=v, key_cache=key_cache, value_cache=value_cache, slot_mapping=slot_mapping)
    if tokens:
        block_h, block_d = next_power_of_2(kv_heads), next_power_of_2(head_dim)
        launcher(kv_write_kernel, device, op)[(tokens,)](
            k, v, key_cache, value_cache, slot_mapping, kv_heads, head_dim,
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            key_cache.stride(0), key_cache.stride(1), value_cache.stride(0), value_cache.stride(1),
            BLOCK_H=block_h, BLOCK_D=block_d, num_warps=max(1, min(8, block_h * block_d // 256)),
        )  # fmt: skip
