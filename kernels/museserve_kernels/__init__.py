"""Fused Triton kernels for the Muse decoder, each beside the torch reference it must match.

Every module holds the `@triton.jit` kernel, a `*_reference` function (the exact semantics, in
torch, on any device) and a wrapper that checks its arguments and launches the kernel on CUDA
tensors (or on CPU tensors when TRITON_INTERPRET=1 was set before triton was imported). The model never
calls these directly: `museserve.model.ops` picks kernel or reference per device.
"""

from museserve_kernels.activation import silu_and_mul, silu_and_mul_reference, silu_mul, silu_mul_reference
from museserve_kernels.cache_write import kv_write, kv_write_reference
from museserve_kernels.norm import add_rmsnorm, add_rmsnorm_reference, rmsnorm, rmsnorm_reference
from museserve_kernels.paged_attention import paged_decode, paged_decode_reference
from museserve_kernels.rope import rotary_, rotary_reference

__all__ = [
    "add_rmsnorm",
    "add_rmsnorm_reference",
    "kv_write",
    "kv_write_reference",
    "paged_decode",
    "paged_decode_reference",
    "rmsnorm",
    "rmsnorm_reference",
    "rotary_",
    "rotary_reference",
    "silu_and_mul",
    "silu_and_mul_reference",
    "silu_mul",
    "silu_mul_reference",
]
