"""What every wrapper shares: argument checks with clear errors, and the choice of what to launch.

A wrapper launches its compiled kernel on CUDA tensors. CPU tensors are accepted only when the
kernels are interpreted, which Triton decides for the whole process when it is imported: with
TRITON_INTERPRET=1 set before `import triton`, every `@triton.jit` function (the kernels and
triton's own tl.sum, tl.max, ...) becomes an interpreted one. The kernel tests run so, in a
process of their own. Anywhere else a CPU call is an error: the model reaches CPU tensors
through the torch references instead.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction


def is_interpreted(kernel: Any) -> bool:
    """True when the kernel runs in the interpreter (numpy on the host), where bf16 arithmetic and
    bf16 dots are wrong: kernels then compute in float32 after their loads."""
    return isinstance(kernel, InterpretedFunction)


def launcher(kernel: Any, device: torch.device, op: str) -> Any:
    """The kernel, checked to be launchable on tensors of `device` (`launcher(...)[grid](...)`)."""
    if device.type == "cuda" or (device.type == "cpu" and is_interpreted(kernel)):
        return kernel
    raise ValueError(
        f"{op}: the Triton kernel runs on CUDA tensors, got {device}; use the torch reference on other "
        "devices, or interpret the kernels on the CPU: TRITON_INTERPRET=1 set before triton is imported"
    )


def same_device(op: str, **tensors: Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        raise ValueError(f"{op}: all tensors must be on one device, got {devices}")
    return first


def check_dtype(op: str, name: str, t: Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        raise ValueError(f"{op}: {name} must be one of {[str(d) for d in allowed]}, got {t.dtype}")


def check_shape(op: str, name: str, t: Tensor, shape: tuple[int | None, ...]) -> None:
    """`shape` with None for a size that may be anything."""
    ok = t.dim() == len(shape) and all(want is None or want == got for want, got in zip(shape, t.shape, strict=True))
    if not ok:
        wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{op}: {name} must be {wanted}, got {list(t.shape)}")


def check_unit_stride(op: str, name: str, t: Tensor) -> None:
    """The kernels index the last dimension with unit stride (rows may be strided)."""
    if t.numel() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} needs a unit stride in its last dimension, got strides {t.stride()}")


FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INDICES = (torch.int32, torch.int64)


def check_paged_attention(
    op: str, q: Tensor, key_cache: Tensor, value_cache: Tensor, block_size: int
) -> tuple[int, int, int, int]:
    """The checks every paged attention wrapper shares: q [rows, q_heads, head_dim] of a float dtype,
    caches [num_slots, kv_heads, head_dim] of q's dtype with kv_heads dividing q_heads, and a
    power-of-two block size. Returns (rows, q_heads, head_dim, kv_heads)."""
    check_dtype(op, "q", q, FLOATS)
    check_shape(op, "q", q, (None, None, None))
    rows, q_heads, head_dim = q.shape
    check_shape(op, "key_cache", key_cache, (None, None, head_dim))
    check_shape(op, "value_cache", value_cache, tuple(key_cache.shape))
    kv_heads = key_cache.shape[1]
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{op}: q_heads ({q_heads}) must be a multiple of kv_heads ({kv_heads})")
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        if t.dtype != q.dtype:
            raise ValueError(f"{op}: {name} must have q's dtype {q.dtype}, got {t.dtype}")
    if block_size < 1 or block_size & (block_size - 1):
        raise ValueError(f"{op}: block_size must be a power of two, got {block_size}")
    return rows, q_heads, head_dim, kv_heads


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def warps_for(elements: int) -> int:
    """Warps for a program that streams `elements` values: ~8-16 per thread, between 1 and 16."""
    return max(1, min(16, next_power_of_2(elements) // 512))
