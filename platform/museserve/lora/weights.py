"""Every resident adapter's weights, stacked by slot, on the model's device; and the wrapper
that adds their delta to the base projections (`LoraLinear`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from museserve.lora.delta import LoraBatch, add_lora_
from museserve.lora.peft_files import ATTENTION_MODULES, MLP_MODULES, TARGET_MODULES, LoraAdapter, module_shape
from museserve.model.config import MuseConfig


class LoraContext:
    """The step's rows and their slots, set by the runner around one forward pass (None: no row
    of the step has an adapter, and the wrappers add nothing). One device thread reads it."""

    def __init__(self) -> None:
        self.batch: LoraBatch | None = None


class LoraLinear(nn.Module):
    """base(x) + the delta of each row's adapter: A [slots, R, in] and B [slots, out, R] are this
    projection's slice of `LoraWeights`."""

    def __init__(self, base: nn.Module, a: Tensor, b: Tensor, context: LoraContext):
        super().__init__()
        self.base = base
        self.lora_a = a
        self.lora_b = b
        self.context = context

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        batch = self.context.batch
        if batch is not None:
            add_lora_(out.view(-1, out.shape[-1]), x.reshape(-1, x.shape[-1]), self.lora_a, self.lora_b, batch)
        return out


class LoraWeights:
    """For each decoder projection: A [num_slots, max_rank, in] and B [num_slots, out, max_rank]
    (scaling folded into B), in the model's dtype on its device. Slot s holds one adapter; rows
    beyond its rank, and the projections it does not adapt, are zeros, so they add nothing."""

    def __init__(self, config: MuseConfig, num_slots: int, max_rank: int, dtype: torch.dtype, device: torch.device):
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.context = LoraContext()
        self.a: dict[tuple[int, str], Tensor] = {}
        self.b: dict[tuple[int, str], Tensor] = {}
        for layer in range(config.num_hidden_layers):
            for module in TARGET_MODULES:
                in_features, out_features = module_shape(config, module)
                self.a[layer, module] = torch.zeros(num_slots, max_rank, in_features, dtype=dtype, device=device)
                self.b[layer, module] = torch.zeros(num_slots, out_features, max_rank, dtype=dtype, device=device)

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.a.values(), *self.b.values()))

    @torch.inference_mode()
    def write(self, slot: int, adapter: LoraAdapter) -> None:
        """Puts `adapter` in `slot`, replacing what it held. No step may read the slot meanwhile."""
        for where, a in self.a.items():
            a[slot].zero_()
            self.b[where][slot].zero_()
        for where, (lora_a, lora_b) in adapter.weights.items():
            rank = lora_a.shape[0]
            self.a[where][slot, :rank].copy_(lora_a)
            self.b[where][slot, :, :rank].copy_(lora_b)

    def attach(self, model: nn.Module) -> int:
        """Wraps each decoder projection of `model` (a `MuseForCausalLM`) in a `LoraLinear`
        reading these weights; returns how many were wrapped."""
        wrapped = 0
        for layer_idx, layer in enumerate(model.model.layers):
            for block, modules in ((layer.self_attn, ATTENTION_MODULES), (layer.mlp, MLP_MODULES)):
                for module in modules:
                    base = getattr(block, module)
                    where = (layer_idx, module)
                    setattr(block, module, LoraLinear(base, self.a[where], self.b[where], self.context))
                    wrapped += 1
        return wrapped
