"""SiLU-and-mul, the SwiGLU activation: out = silu(gate) * up.

Semantics (the reference): silu(gate) is rounded to the input dtype, then multiplied by up and
rounded again, as two torch ops do. gate, up: [..., intermediate], the same shape and dtype; they
may be the two halves of one [..., 2 * intermediate] tensor (`silu_and_mul` takes that form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from museserve_kernels._launch import FLOATS, check_dtype, check_shape, check_unit_stride, launcher, same_device


@triton.jit
def silu_mul_kernel(
    gate_ptr,  # [rows, n]
    up_ptr,  # [rows, n]
    out_ptr,  # [rows, n]
    n,
    gate_stride,
    up_stride,
    out_stride,
    BLOCK: tl.constexpr,
):
    # Grid (rows, cdiv(n, BLOCK)).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    g = tl.load(gate_ptr + row * gate_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + row * up_stride + cols, mask=mask, other=0.0).to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (silu * u).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul_reference(gate: Tensor, up: Tensor) -> Tensor:
    return F.silu(gate) * up


def silu_and_mul_reference(x: Tensor) -> Tensor:
    """x [..., 2 * n] -> [..., n]: the first half is the gate, the second the up projection."""
    gate, up = x.chunk(2, dim=-1)
    return silu_mul_reference(gate, up)


def silu_and_mul(x: Tensor) -> Tensor:
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"silu_and_mul: x must be [..., 2 * n], got {list(x.shape)}")
    gate, up = x.chunk(2, dim=-1)
    return silu_mul(gate, up)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """A new tensor of gate's shape."""
    op = "silu_mul"
    check_dtype(op, "gate", gate, FLOATS)
    check_shape(op, "up", up, tuple(gate.shape))
    if up.dtype != gate.dtype:
        raise ValueError(f"{op}: up must have gate's dtype {gate.dtype}, got {up.dtype}")
    device = same_device(op, gate=gate, up=up)
    n = gate.shape[-1] if gate.dim() else 1
    g2, u2 = gate.reshape(-1, n), up.reshape(-1, n)
    check_unit_stride(op, "gate", g2)
    check_unit_stride(op, "up", u2)
    out = torch.empty(g2.shape, dtype=gate.dtype, device=device)
    if out.numel():
        block = min(1024, triton.next_power_of_2(n))
        grid = (g2.shape[0], triton.cdiv(n, block))
        launcher(silu_mul_kernel, device, op)[grid](
            g2, u2, out, n, g2.stride(0), u2.stride(0), out.stride(0), BLOCK=block, num_warps=4
        )
    return out.view(gate.shape)
