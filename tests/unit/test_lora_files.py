"""PEFT adapter files: what `peft` writes is read, with its scaling (alpha / r, rsLoRA, per-module
alpha); what cannot be served on the base is refused naming the adapter and the tensor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from museserve.lora.peft_files import AdapterError, read_adapter
from museserve.model.config import MuseConfig
from tests.lora_support import make_adapter, write_adapter

BASE = MuseConfig.named("tiny", vocab_size=512)


@pytest.fixture(scope="module")
def hf_tiny():
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE.to_hf_dict())).eval()


def test_an_adapter_made_by_peft_is_read_with_its_scaling(hf_tiny, tmp_path: Path) -> None:
    made = make_adapter(hf_tiny, tmp_path / "made", rank=4, alpha=12, targets=("q_proj", "down_proj"), seed=1)
    adapter = read_adapter("made", str(made), BASE, max_rank=16)
    assert adapter.rank == 4
    assert set(adapter.weights) == {
        (layer, m) for layer in range(BASE.num_hidden_layers) for m in ("q_proj", "down_proj")
    }
    raw = load_file(str(made / "adapter_model.safetensors"))
    a, b = adapter.weights[0, "q_proj"]
    torch.testing.assert_close(a, raw["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
    torch.testing.assert_close(b, raw["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] * 3.0)


def test_rslora_and_per_module_alpha(tmp_path: Path) -> None:
    rs = write_adapter(tmp_path / "rs", BASE, rank=4, seed=0, alpha=8, settings={"use_rslora": True})
    patterned = write_adapter(
        tmp_path / "pat", BASE, rank=4, seed=0, alpha=8, settings={"alpha_pattern": {"down_proj": 2}}
    )
    raw = load_file(str(rs / "adapter_model.safetensors"))
    b = raw["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    torch.testing.assert_close(read_adapter("rs", str(rs), BASE, 16).weights[1, "down_proj"][1], b * 8 / math.sqrt(4))
    read = read_adapter("pat", str(patterned), BASE, 16)
    torch.testing.assert_close(read.weights[1, "down_proj"][1], b * 2 / 4)
    torch.testing.assert_close(read.weights[1, "q_proj"][1], load_file(str(patterned / "adapter_model.safetensors"))[
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"] * 8 / 4)  # fmt: skip


def rewrite(directory: Path, change) -> None:
    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update({Q_B: torch.zeros(7, 4)}), r"adapter bad: layers\.0\.q_proj\.lora_B\.weight is \[7, 4\]"),
        (lambda t: t.update({Q_A: torch.zeros(4, 9)}), r"layers\.0\.q_proj\.lora_A\.weight is \[4, 9\]"),
        (lambda t: t.pop(Q_B), r"layers\.0\.q_proj\.lora_B\.weight is missing"),
        (
            lambda t: t.update({"base_model.model.model.layers.99.mlp.up_proj.lora_A.weight": torch.zeros(4, 8)}),
            r"layers\.99\.mlp\.up_proj\.lora_A\.weight is for layer 99",
        ),
        (
            lambda t: t.update({"base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 8)}),
            r"tensor base_model\.model\.model\.embed_tokens\.lora_embedding_A is not a LoRA",
        ),
        (lambda t: t.update({Q_B: torch.full_like(t[Q_B], math.nan)}), r"layers\.0\.q_proj holds a NaN"),
    ],
)
def test_a_tensor_that_does_not_fit_the_base_is_named(tmp_path: Path, change, message: str) -> None:
    directory = write_adapter(tmp_path / "bad", BASE, rank=4, seed=0)
    rewrite(directory, change)
    with pytest.raises(AdapterError, match=message):
        read_adapter("bad", str(directory), BASE, max_rank=16)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"use_dora": True}, "use_dora=True is not served"),
        ({"bias": "all"}, "bias='all' is not served"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not LORA"),
    ],
)
def test_settings_the_delta_cannot_apply_are_refused(tmp_path: Path, settings: dict, message: str) -> None:
    directory = write_adapter(tmp_path / "odd", BASE, rank=4, seed=0, settings=settings)
    with pytest.raises(AdapterError, match=f"adapter odd: .*{message}"):
        read_adapter("odd", str(directory), BASE, max_rank=16)


def test_a_rank_above_the_pools_limit_is_refused(tmp_path: Path) -> None:
    directory = write_adapter(tmp_path / "wide", BASE, rank=32, seed=0)
    with pytest.raises(AdapterError, match=r"adapter wide: layers\.0\.\w+ has rank 32; .*lora\.max_rank=16"):
        read_adapter("wide", str(directory), BASE, max_rank=16)


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    directory = write_adapter(tmp_path / "broken", BASE, rank=4, seed=0)
    (directory / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="adapter broken: adapter_model.safetensors cannot be read"):
        read_adapter("broken", str(directory), BASE, 16)
    (directory / "adapter_config.json").write_text("{")
    with pytest.raises(AdapterError, match="adapter broken: adapter_config.json cannot be read"):
        read_adapter("broken", str(directory), BASE, 16)
    (directory / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="adapter broken: adapter_model.safetensors is missing"):
        read_adapter("broken", str(directory), BASE, 16)
