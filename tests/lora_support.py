"""PEFT adapters for tests: random LoRA adapters of a transformers model, saved in PEFT's format,
and the reference they are held to (the base model with the adapter merged in by `peft`)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch


def make_adapter(
    hf: torch.nn.Module,
    directory: Path,
    *,
    rank: int,
    targets: tuple[str, ...],
    seed: int,
    alpha: float | None = None,
    rslora: bool = False,
    b_std: float = 0.02,
) -> Path:
    """A random adapter of `hf` (left unchanged) saved in `directory`. B is drawn (PEFT starts it
    at zero), small enough that answers stay fluent and large enough that they change."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        target_modules=list(targets),
        use_rslora=rslora,
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(hf), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, b_std)
    peft_model.save_pretrained(directory)
    return directory


def merged(hf: torch.nn.Module, directory: Path) -> torch.nn.Module:
    """A copy of `hf` with the adapter in `directory` merged into its weights (`merge_and_unload`)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(copy.deepcopy(hf), directory).merge_and_unload().eval()


def write_adapter(
    directory: Path,
    config,
    *,
    rank: int,
    seed: int,
    targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj"),
    alpha: float | None = None,
    scale: float = 0.5,
    settings: dict | None = None,
) -> Path:
    """A random adapter of a `MuseConfig`-shaped model in PEFT's file format (the key names and
    `adapter_config.json` that `peft`'s `save_pretrained` writes), without building the model."""
    import json

    from safetensors.torch import save_file

    from museserve.lora.peft_files import ATTENTION_MODULES, module_shape

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config.num_hidden_layers):
        for module in targets:
            in_features, out_features = module_shape(config, module)
            block = "self_attn" if module in ATTENTION_MODULES else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * scale
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    adapter_config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha if alpha is not None else rank,
        "target_modules": list(targets),
        "bias": "none",
        **(settings or {}),
    }
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config))
    return directory
