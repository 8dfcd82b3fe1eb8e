from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from museserve.checkpoint import read_checkpoint
from museserve.model.config import MuseConfig, RopeScaling
from museserve.model.layers import (
    Attention,
    RMSNorm,
    RotaryEmbedding,
    TiedLMHead,
    apply_rotary,
    llama3_inverse_frequencies,
)
from museserve.model.loader import build_model
from museserve.model.muse import MuseForCausalLM
from museserve.model.rope_scaling import LinearRopeScaling
from tests.reference_kv_cache import SequenceKVCache, reference_logits

VOCAB = 97


@pytest.fixture(scope="module")
def tiny() -> MuseConfig:
    return MuseConfig.named("tiny", VOCAB)


@pytest.fixture(scope="module")
def model(tiny: MuseConfig) -> MuseForCausalLM:
    return build_model(tiny, seed=0)


def full_logits(model: MuseForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    cache = SequenceKVCache.for_model(model.config)
    return reference_logits(model, ids, torch.arange(len(ids)), cache)


# ---- config ----


def test_named_sizes_have_long_context() -> None:
    for size in MuseConfig.named_sizes():
        config = MuseConfig.named(size, 32000)
        assert config.max_position_embeddings == 262_144
        assert config.rope_theta == 1e6
        assert config.rope_scaling is not None
        assert config.rope_scaling.original_max_position_embeddings == 8192
        assert config.num_attention_heads % config.num_key_value_heads == 0


def test_tiny_and_small_shapes() -> None:
    tiny = MuseConfig.named("tiny", VOCAB)
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads) == (64, 2, 4)
    assert (tiny.num_key_value_heads, tiny.intermediate_size, tiny.head_dim) == (2, 128, 16)
    small = MuseConfig.named("small", VOCAB)
    assert (small.hidden_size, small.num_hidden_layers, small.num_attention_heads) == (512, 8, 8)
    assert (small.num_key_value_heads, small.intermediate_size) == (2, 1408)
    assert 7e9 < MuseConfig.named("8b", 128256).num_parameters < 9e9


def test_unknown_size_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"tiny.*small.*8b"):
        MuseConfig.named("huge", VOCAB)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_key_value_heads": 3}, "divisible by num_key_value_heads"),
        ({"hidden_size": 66, "head_dim": 0}, "divisible by num_attention_heads"),
        ({"head_dim": 15}, "even"),
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"max_position_embeddings": 4096}, "original_max_position_embeddings"),
        ({"qkv_bias": True, "qk_norm": True}, "qkv_bias and qk_norm"),
    ],
)
def test_config_validation(tiny: MuseConfig, changes: dict[str, int | bool], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(tiny, **changes)


def test_hf_dict_round_trip(tiny: MuseConfig) -> None:
    qwen2 = replace(tiny, rope_scaling=None, qkv_bias=True, tie_word_embeddings=True)
    qwen3 = replace(tiny, rope_scaling=LinearRopeScaling(4.0), qk_norm=True, head_dim=32)
    for config in (tiny, qwen2, qwen3):
        assert MuseConfig.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config


def test_reads_llama31_and_qwen2_configs() -> None:
    llama = MuseConfig.from_hf_dict(
        {
            "model_type": "llama",
            "vocab_size": 128256,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "hidden_act": "silu",
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
            "tie_word_embeddings": False,
        }
    )
    assert llama.head_dim == 128 and llama.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)
    qwen = MuseConfig.from_hf_dict(
        {
            "model_type": "qwen2",
            "vocab_size": 151936,
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rope_scaling": None,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
        }
    )
    assert qwen.qkv_bias and qwen.rope_scaling is None and qwen.head_dim == 64
    with pytest.raises(ValueError, match="yarn"):
        MuseConfig.from_hf_dict({**qwen.to_hf_dict(), "rope_scaling": {"rope_type": "yarn"}})


# ---- layers ----


def test_rmsnorm_residual_path_equals_add_then_norm() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, residual = torch.randn(5, 32), torch.randn(5, 32)
    normed, new_residual = norm(x, residual)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(normed, norm(x + residual))
    plain = norm(x)
    expected = x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * norm.weight
    torch.testing.assert_close(plain, expected)


def test_rope_scaling_keeps_high_and_stretches_low_frequencies() -> None:
    scaling = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0)
    plain = llama3_inverse_frequencies(128, 1e6, None)
    scaled = llama3_inverse_frequencies(128, 1e6, scaling)
    wavelength = 2 * math.pi / plain
    high = wavelength < 8192 / 4
    low = wavelength > 8192 / 1
    middle = ~(high | low)
    assert high.any() and low.any() and middle.any()
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / 32)
    assert (scaled[middle] < plain[middle]).all() and (scaled[middle] > plain[middle] / 32).all()


def test_rope_depends_on_relative_position_only() -> None:
    rotary = RotaryEmbedding(16, 1e6, RopeScaling())
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)

    def score(q_pos: int, k_pos: int) -> torch.Tensor:
        cos, sin = rotary(torch.tensor([q_pos, k_pos]), torch.float32)
        rotated_q = apply_rotary(q, cos[:1], sin[:1])
        rotated_k = apply_rotary(k, cos[1:], sin[1:])
        return (rotated_q * rotated_k).sum()

    torch.testing.assert_close(score(110, 100), score(1010, 1000), atol=1e-4, rtol=1e-4)
    cos, sin = rotary(torch.tensor([7]), torch.float32)
    torch.testing.assert_close(apply_rotary(q, cos, sin).norm(), q.norm())


def test_gqa_attention_matches_naive_reference(tiny: MuseConfig) -> None:
    torch.manual_seed(0)
    attention = Attention(tiny, layer_idx=0)
    heads, kv_heads, d = tiny.num_attention_heads, tiny.num_key_value_heads, tiny.head_dim
    assert attention.q_proj.out_features == heads * d
    assert attention.k_proj.out_features == attention.v_proj.out_features == kv_heads * d
    assert attention.o_proj.in_features == heads * d
    hidden = torch.randn(6, tiny.hidden_size)
    rotary = RotaryEmbedding(d, tiny.rope_theta, tiny.rope_scaling)
    cos, sin = rotary(torch.arange(6), torch.float32)
    cache = SequenceKVCache.for_model(tiny)
    with torch.no_grad():
        out = attention(hidden, cos, sin, cache)
        k, v = cache.layer(0)
        assert k.shape == v.shape == (6, kv_heads, d)
        q = apply_rotary(attention.q_proj(hidden).view(6, heads, d), cos, sin)
        group = heads // kv_heads
        k_full = k.repeat_interleave(group, dim=1)  # query head h reads kv head h // group
        v_full = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,shd->hts", q, k_full) / math.sqrt(d)
        scores = scores.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
        expected = torch.einsum("hts,shd->thd", scores.softmax(-1), v_full).reshape(6, heads * d)
        torch.testing.assert_close(out, attention.o_proj(expected), atol=1e-5, rtol=1e-5)


# ---- model ----


def test_hf_parameter_names(model: MuseForCausalLM) -> None:
    names = set(model.state_dict())
    for suffix in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.layers.1.self_attn.{suffix}.weight" in names
    for suffix in ("gate_proj", "up_proj", "down_proj"):
        assert f"model.layers.0.mlp.{suffix}.weight" in names
    for name in (
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        assert name in names
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_incremental_decode_matches_full_forward(model: MuseForCausalLM) -> None:
    ids = torch.randint(0, VOCAB, (13,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = full_logits(model, ids)
        cache = SequenceKVCache.for_model(model.config, initial_capacity=2)  # forces regrowth
        chunks = [(0, 5), (5, 8)] + [(i, i + 1) for i in range(8, 13)]  # prefill, chunk, decode
        pieces = []
        for start, end in chunks:
            pieces.append(reference_logits(model, ids[start:end], torch.arange(start, end), cache))
            assert cache.num_tokens == end
    assert expected.shape == (13, VOCAB) and expected.dtype == torch.float32
    torch.testing.assert_close(torch.cat(pieces), expected, atol=1e-4, rtol=1e-4)


def test_embed_rows_can_be_replaced(model: MuseForCausalLM) -> None:
    ids = torch.tensor([3, 4, 5, 6])
    with torch.inference_mode():
        embeds = model.embed(ids)
        assert embeds.shape == (4, 64)
        fused = embeds.clone()
        fused[1:3] = torch.randn(2, 64, generator=torch.Generator().manual_seed(0)) * 0.02
        cache = SequenceKVCache.for_model(model.config)
        logits = model.compute_logits(model(fused, torch.arange(4), cache))
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, full_logits(model, ids))


def test_positions_near_context_end(model: MuseForCausalLM) -> None:
    positions = torch.arange(262_140, 262_144)
    with torch.inference_mode():
        cache = SequenceKVCache.for_model(model.config)
        logits = reference_logits(model, torch.tensor([1, 2, 3, 4]), positions, cache)
    assert torch.isfinite(logits).all()
    rotary = model.model.rotary_emb
    attributes = list(vars(rotary).values())
    attributes += [v for a in attributes if isinstance(a, dict) for v in a.values()]
    tensors = [t for t in attributes if isinstance(t, torch.Tensor)] + list(model.buffers())
    assert max(t.numel() for t in tensors) <= model.config.head_dim


def test_dummy_init_is_seeded(tiny: MuseConfig, model: MuseForCausalLM) -> None:
    same = build_model(tiny, seed=0)
    other = build_model(tiny, seed=1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, same.state_dict()[name]), name
        if "norm" not in name:
            assert not torch.equal(tensor, other.state_dict()[name]), name
    weight = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    assert 0.015 < weight.std().item() < 0.025
    assert torch.equal(model.state_dict()["model.norm.weight"], torch.ones(64))


def test_dtype_and_tied_embeddings(tiny: MuseConfig) -> None:
    tied = build_model(replace(tiny, tie_word_embeddings=True), dtype=torch.bfloat16)
    assert isinstance(tied.lm_head, TiedLMHead)  # packed where oneDNN takes bfloat16
    assert "lm_head.weight" not in tied.state_dict()
    assert all(p.dtype == torch.bfloat16 for p in tied.parameters())
    with torch.inference_mode():
        hidden = tied(
            tied.embed(torch.tensor([1, 2])),
            torch.arange(2),
            SequenceKVCache.for_model(tied.config, dtype=torch.bfloat16),
        )
        logits = tied.compute_logits(hidden)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, (hidden @ tied.model.embed_tokens.weight.T).float())


def test_unknown_load_format(tiny: MuseConfig) -> None:
    with pytest.raises(ValueError, match="load_format"):
        build_model(tiny, load_format="pickle")


def save_checkpoint(model: MuseForCausalLM, directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict()))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    save_file({k: state[k] for k in names[: len(names) // 2]}, str(directory / "model-1.safetensors"))
    save_file({k: state[k] for k in names[len(names) // 2 :]}, str(directory / "model-2.safetensors"))


def test_safetensors_round_trip(model: MuseForCausalLM, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path)
    config = MuseConfig.from_hf_dict(read_checkpoint(str(tmp_path), "safetensors").hf_config)
    assert config == model.config
    loaded = build_model(config, load_format="safetensors", path=str(tmp_path))
    ids = torch.tensor([5, 9, 2, 7, 1])
    with torch.inference_mode():
        torch.testing.assert_close(full_logits(loaded, ids), full_logits(model, ids), atol=0, rtol=0)


def test_safetensors_reports_missing_and_unexpected_keys(model: MuseForCausalLM, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path)
    first = tmp_path / "model-1.safetensors"
    tensors = load_file(str(first))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["model.layers.9.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(first))
    with pytest.raises(ValueError, match="missing keys") as error:
        build_model(model.config, load_format="safetensors", path=tmp_path)
    assert dropped in str(error.value) and "model.layers.9.mlp.extra.weight" in str(error.value)
    with pytest.raises(ValueError, match="path"):
        build_model(model.config, load_format="safetensors")
