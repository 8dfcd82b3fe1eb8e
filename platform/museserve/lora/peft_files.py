"""A PEFT LoRA adapter read from its directory and checked against the base model.

`adapter_config.json` gives the rank `r`, `lora_alpha`, `use_rslora` and per-module overrides
(`rank_pattern`, `alpha_pattern`); `adapter_model.safetensors` holds, per adapted projection,
`...layers.{i}.{self_attn|mlp}.{module}.lora_A.weight` [r, in] and `...lora_B.weight` [out, r].
The delta of a projection is `scaling * B @ A @ x`, scaling = alpha / r (alpha / sqrt(r) with
rsLoRA). Anything the batched delta cannot apply exactly (DoRA, biases, modules to save,
embeddings or the LM head, a rank above `max_rank`) is refused here, naming the adapter and,
where one is at fault, the tensor.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import torch
from safetensors import safe_open
from torch import Tensor

from museserve.lora.registry import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from museserve.model.config import MuseConfig

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
TARGET_MODULES = ATTENTION_MODULES + MLP_MODULES
_TENSOR = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be served on this base model."""


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter's weights in float32 on the CPU: (layer, module) -> (A [r, in], B [out, r] with
    the scaling folded in)."""

    name: str
    rank: int  # the largest of its modules' ranks
    weights: dict[tuple[int, str], tuple[Tensor, Tensor]]

    @property
    def num_bytes(self) -> int:
        return sum(a.numel() * 4 + b.numel() * 4 for a, b in self.weights.values())


def module_shape(config: MuseConfig, module: str) -> tuple[int, int]:
    """(in_features, out_features) of a base projection."""
    hidden, d = config.hidden_size, config.head_dim
    return {
        "q_proj": (hidden, config.num_attention_heads * d),
        "k_proj": (hidden, config.num_key_value_heads * d),
        "v_proj": (hidden, config.num_key_value_heads * d),
        "o_proj": (config.num_attention_heads * d, hidden),
        "gate_proj": (hidden, config.intermediate_size),
        "up_proj": (hidden, config.intermediate_size),
        "down_proj": (config.intermediate_size, hidden),
    }[module]


def read_adapter(name: str, directory: str, base: MuseConfig, max_rank: int) -> LoraAdapter:
    """The adapter in `directory`; AdapterError naming `name` (and the tensor) when it cannot be served."""
    settings = _read_settings(name, directory)
    path = os.path.join(directory, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise AdapterError(f"adapter {name}: {ADAPTER_WEIGHTS} is missing from {directory}")
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors' SafetensorError (a bad header or dtype), OSError
        raise AdapterError(f"adapter {name}: {ADAPTER_WEIGHTS} cannot be read: {e}") from None
    halves: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        layer, module, half = _locate(name, key, base)
        halves.setdefault((layer, module), {})[half] = tensor.float()
    if not halves:
        raise AdapterError(f"adapter {name}: {ADAPTER_WEIGHTS} holds no LoRA tensors")
    weights = {
        where: _checked_pair(name, where, pair, base, max_rank, settings) for where, pair in sorted(halves.items())
    }
    return LoraAdapter(name, max(a.shape[0] for a, _ in weights.values()), weights)


@dataclass(frozen=True)
class _Settings:
    alpha: float
    rslora: bool
    alpha_pattern: dict[str, float]


def _read_settings(name: str, directory: str) -> _Settings:
    try:
        with open(os.path.join(directory, ADAPTER_CONFIG), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise AdapterError(f"adapter {name}: {ADAPTER_CONFIG} cannot be read: {e}") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"adapter {name}: {ADAPTER_CONFIG} is not a JSON object")
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name}: peft_type {raw.get('peft_type')!r} is not LORA")
    refused = {
        "use_dora": bool(raw.get("use_dora")),
        "bias": raw.get("bias", "none") not in (None, "none"),
        "modules_to_save": bool(raw.get("modules_to_save")),
        "fan_in_fan_out": bool(raw.get("fan_in_fan_out")),
    }
    for field, present in refused.items():
        if present:
            raise AdapterError(f"adapter {name}: {field}={raw[field]!r} is not served (plain LoRA on linear layers)")
    alpha = raw.get("lora_alpha", raw.get("r", 8))
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise AdapterError(f"adapter {name}: lora_alpha must be a number")
    pattern = raw.get("alpha_pattern") or {}
    return _Settings(float(alpha), bool(raw.get("use_rslora")), {str(k): float(v) for k, v in pattern.items()})


def _locate(name: str, key: str, base: MuseConfig) -> tuple[int, str, str]:
    match = _TENSOR.match(key)
    if match is None:
        raise AdapterError(f"adapter {name}: tensor {key} is not a LoRA A/B weight of a decoder projection")
    layer, block, module, half = int(match[1]), match[2], match[3], match[4]
    expected = "self_attn" if module in ATTENTION_MODULES else "mlp"
    if module not in TARGET_MODULES or block != expected:
        raise AdapterError(f"adapter {name}: tensor {key} adapts {block}.{module}; served: {', '.join(TARGET_MODULES)}")
    if layer >= base.num_hidden_layers:
        raise AdapterError(f"adapter {name}: tensor {key} is for layer {layer}; the base has {base.num_hidden_layers}")
    return layer, module, half


def _checked_pair(
    name: str,
    where: tuple[int, str],
    pair: dict[str, Tensor],
    base: MuseConfig,
    max_rank: int,
    settings: _Settings,
) -> tuple[Tensor, Tensor]:
    layer, module = where
    label = f"layers.{layer}.{module}"
    if set(pair) != {"A", "B"}:
        missing = "lora_B" if "A" in pair else "lora_A"
        raise AdapterError(f"adapter {name}: {label}.{missing}.weight is missing")
    a, b = pair["A"], pair["B"]
    in_features, out_features = module_shape(base, module)
    rank = a.shape[0] if a.dim() == 2 else -1
    if a.dim() != 2 or a.shape[1] != in_features:
        raise AdapterError(
            f"adapter {name}: {label}.lora_A.weight is {list(a.shape)}; the base's {module} needs [r, {in_features}]"
        )
    if b.dim() != 2 or tuple(b.shape) != (out_features, rank):
        raise AdapterError(
            f"adapter {name}: {label}.lora_B.weight is {list(b.shape)}; the base's {module} with r={rank} needs "
            f"[{out_features}, {rank}]"
        )
    if rank > max_rank:
        raise AdapterError(f"adapter {name}: {label} has rank {rank}; this pool serves lora.max_rank={max_rank}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AdapterError(f"adapter {name}: {label} holds a NaN or infinite weight")
    alpha = _alpha(settings, f"model.layers.{layer}.{'self_attn' if module in ATTENTION_MODULES else 'mlp'}.{module}")
    scaling = alpha / math.sqrt(rank) if settings.rslora else alpha / rank
    return a.contiguous(), (b * scaling).contiguous()


def _alpha(settings: _Settings, module_path: str) -> float:
    """PEFT's `alpha_pattern`: the first key matching the module's name, or its suffix, wins."""
    for key, alpha in settings.alpha_pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return alpha
    return settings.alpha
