"""RMSNorm, optionally fused with the residual add before it: one read of x and residual, one
write of the sum and of the normalised row.

Semantics (the reference below): summed = x + residual, rounded to x's dtype; then
out = (summed * rsqrt(mean(summed^2) + eps) in float32, rounded to x's dtype) * weight, in the
dtype torch promotes x and weight to. x, residual: [..., hidden]; weight: [hidden].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    warps_for,
)


@triton.jit
def add_rmsnorm_kernel(
    x_ptr,  # [rows, hidden]
    residual_ptr,  # [rows, hidden], read only when HAS_RESIDUAL
    weight_ptr,  # [hidden]
    out_ptr,  # [rows, hidden]
    summed_ptr,  # [rows, hidden], written only when HAS_RESIDUAL
    hidden,
    x_stride,
    residual_stride,
    out_stride,
    summed_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr,  # >= hidden: one program holds a whole row
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    # Upcast right after each load: bf16 arithmetic is wrong in the interpreter.
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * residual_stride + cols, mask=mask, other=0.0).to(tl.float32)
        # The sum is rounded to the stream's dtype before the norm reads it, as in the reference.
        summed = (x + r).to(summed_ptr.dtype.element_ty)
        tl.store(summed_ptr + row * summed_stride + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    mean_square = tl.sum(x * x, axis=0) / hidden
    normed = (x * tl.math.rsqrt(mean_square + eps)).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_reference(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps)
    return normed.to(x.dtype) * weight


def add_rmsnorm_reference(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(norm(x + residual), x + residual)."""
    summed = x + residual
    return rmsnorm_reference(summed, weight, eps), summed


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    out, _ = _launch("rmsnorm", x, None, weight, eps)
    return out


def add_rmsnorm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(normed, summed), both new tensors of x's shape."""
    out, summed = _launch("add_rmsnorm", x, residual, weight, eps)
    assert summed is not None
    return out, summed


def _launch(op: str, x: Tensor, residual: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor | None]:
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be [..., hidden] with hidden > 0, got {list(x.shape)}")
    hidden = x.shape[-1]
    check_dtype(op, "x", x, FLOATS)
    check_dtype(op, "weight", weight, FLOATS)
    check_shape(op, "weight", weight, (hidden,))
    check_unit_stride(op, "weight", weight)
    device = same_device(op, x=x, weight=weight, **({} if residual is None else {"residual": residual}))
    if residual is not None:
        check_shape(op, "residual", residual, tuple(x.shape))
        if residual.dtype != x.dtype:
            raise ValueError(f"{op}: residual must have x's dtype {x.dtype}, got {residual.dtype}")
    # Rows as [rows, hidden]: a view where the layout allows, else a copy (then outputs are fresh anyway).
    x2 = x.reshape(-1, hidden)
    r2 = x2 if residual is None else residual.reshape(-1, hidden)
    check_unit_stride(op, "x", x2)
    check_unit_stride(op, "residual", r2)
    rows = x2.shape[0]
    out = torch.empty((rows, hidden), dtype=torch.promote_types(x.dtype, weight.dtype), device=device)
    summed = torch.empty_like(x2) if residual is not None else out
    if rows:
        block = next_power_of_2(hidden)
        launcher(add_rmsnorm_kernel, device, op)[(rows,)](
            x2, r2, weight, out, summed, hidden,
            x2.stride(0), r2.stride(0), out.stride(0), summed.stride(0), float(eps),
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps_for(block),
        )  # fmt: skip
    out = out.view(x.shape)
    return out, (summed.view(x.shape) if residual is not None else None)
