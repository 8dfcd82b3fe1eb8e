"""Linear layers on oneDNN, their weights packed once at load, for a model served on a CPU.

PyTorch's dense CPU matmul calls MKL, which reports a generic code path on non-Intel x86 CPUs
(AMD EPYC among them) and packs the weight anew on every call. oneDNN runs the CPU's widest
kernels (AVX-512, AVX512-BF16, AMX) from a weight reordered once into its blocked layout.
Measured on a 2-core AMD EPYC (AVX-512), 32 rows through a [1408, 512] weight in float32:
130 GFLOP/s with `F.linear`, 357 with the packed weight (`make bench` gives the engine's figure).

Each output row depends only on its own input row, whatever the number of rows (as with MKL
for more than one row), so a request's tokens do not depend on the batch it runs in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

CPU_GEMMS = ("onednn", "torch")


def can_pack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN serves this device and dtype: CPU, float32, or bfloat16 where the CPU has
    native bfloat16 instructions (oneDNN would emulate them otherwise, slower than MKL)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")):
        return False  # internal ops of PyTorch's CPU compiler backend; absent, nn.Linear stays
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """y = x W^T + b through oneDNN. `weight` and `bias` stay the module's parameters (the
    state dict, tied embeddings and checkpoint writers read them); `packed` is oneDNN's copy
    of the weight, made here, so the weights must not change after packing."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features)  # [N, in]
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters plus the packed copies its `PackedLinear`s hold."""
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    packed = sum(m.packed.numel() * m.packed.element_size() for m in model.modules() if isinstance(m, PackedLinear))
    return dense + packed


def pack_linears(model: nn.Module) -> int:
    """Replaces every `nn.Linear` of `model` (on a CPU, in a dtype `can_pack` takes) by a
    `PackedLinear` of the same parameters; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
