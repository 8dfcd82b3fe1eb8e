"""Linear layers on oneDNN, their weights packed once at load, for a model served on a CPU.

PyTorch's dense CPU matmul calls MKL, which reports a generic code path on non-Intel x86 CPUs
(AMD EPYC among them) and packs the weight anew on every call. oneDNN runs the CPU's widest
kernels (AVX-512, AVX512-BF16, AMX) from a weight reordered once into its blocked layout.
Measured on a 2-core AMD EPYC (AVX-512), 32 rows through a [1408, 512] weight in float32:
130 GFLOP/s with `F.linear`, 357 with the packed weight (`make bench` gives the engine's figure).

Each output row depends only on its own input row, whatever the number of rows (as with MKL
for more than one row), so a request's tokens do not depend on the batch it runs in.

A tied LM head (`layers.TiedLMHead`) is packed the same way from the embedding matrix it
shares; `F.linear` would repack all of [vocab, hidden] on every step. Measured on a 2-core
Xeon (AVX-512), 32 rows through SmolLM2's [49152, 576] head in float32: 141 GFLOP/s with
`F.linear`, 180 packed, against 248 for a packed [1536, 576] layer whose weight stays in cache
(the head streams its 113 MB from memory at every step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from museserve.model.layers import TiedLMHead

if TYPE_CHECKING:
    from museserve.model.muse import MuseForCausalLM

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


def pack_weight(weight: Tensor) -> Tensor:
    """oneDNN's blocked copy of a [out, in] weight, for `packed_linear`."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def packed_linear(x: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """x [..., in] -> [..., out] through a weight from `pack_weight`."""
    rows = x.reshape(-1, x.shape[-1])  # [N, in]
    out = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out_features)


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
        self.packed = pack_weight(linear.weight)

    def forward(self, x: Tensor) -> Tensor:
        return packed_linear(x, self.packed, self.bias, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedTiedHead(TiedLMHead):
    """A tied LM head through oneDNN. `packed` is oneDNN's copy of the embedding matrix made
    here (the embedding stays the only parameter), so the embedding must not change after."""

    def __init__(self, embedding: Tensor) -> None:
        super().__init__()
        self.vocab_size = embedding.shape[0]
        self.packed = pack_weight(embedding)

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        """As `TiedLMHead`; `embedding` is the matrix packed at construction and is not read."""
        return packed_linear(hidden, self.packed, None, self.vocab_size)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}"


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters plus the packed copies its packed layers hold."""
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    packed_layers = (m for m in model.modules() if isinstance(m, PackedLinear | PackedTiedHead))
    return dense + sum(m.packed.numel() * m.packed.element_size() for m in packed_layers)


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


def pack_tied_head(model: MuseForCausalLM) -> int:
    """Replaces a tied `TiedLMHead` by a `PackedTiedHead` of the embedding matrix; returns 1 if
    it did, 0 where the model has no such head (untied, already packed, or a pipeline stage
    without the head)."""
    if type(model.lm_head) is not TiedLMHead:
        return 0
    model.lm_head = PackedTiedHead(model.model.embed_tokens.weight)
    return 1
