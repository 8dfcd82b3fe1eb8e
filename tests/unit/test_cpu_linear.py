"""Linear layers on oneDNN with packed weights (`museserve.model.cpu_linear`): same results as
`F.linear` to float32 rounding, rows independent of the batch, and `build_model` packing every
linear layer of a CPU model while its parameters and state dict stay as they were."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from museserve.model.config import MuseConfig
from museserve.model.cpu_linear import (
    PackedLinear,
    PackedTiedHead,
    can_pack,
    pack_linears,
    pack_tied_head,
    weight_bytes,
)
from museserve.model.loader import build_model
from tests.reference_kv_cache import SequenceKVCache, reference_logits

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.float32), reason="PyTorch built without oneDNN")

VOCAB = 97


def linear(in_features: int, out_features: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias)
    if bias:
        nn.init.normal_(layer.bias)
    return layer.requires_grad_(False)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 32, 300])
def test_packed_linear_equals_f_linear(bias: bool, rows: int) -> None:
    dense = linear(96, 160, bias)
    packed = PackedLinear(dense)
    x = torch.randn(rows, 96)
    torch.testing.assert_close(packed(x), F.linear(x, dense.weight, dense.bias), rtol=1e-5, atol=1e-5)


def test_packed_linear_keeps_leading_dimensions_and_parameters() -> None:
    dense = linear(64, 48, bias=True)
    packed = PackedLinear(dense)
    x = torch.randn(2, 5, 64)
    out = packed(x)
    assert out.shape == (2, 5, 48)
    torch.testing.assert_close(out, F.linear(x, dense.weight, dense.bias), rtol=1e-5, atol=1e-5)
    assert packed.weight is dense.weight and packed.bias is dense.bias
    assert [name for name, _ in packed.named_parameters()] == ["weight", "bias"]
    assert set(packed.state_dict()) == {"weight", "bias"}  # the packed copy is not saved


def test_packed_linear_takes_strided_and_empty_inputs() -> None:
    dense = linear(64, 32, bias=True)
    packed = PackedLinear(dense)
    wide = torch.randn(10, 128)
    for x in (wide[:, ::2], wide[::2, :64], torch.randn(64, 10).t()):
        assert not x.is_contiguous()
        torch.testing.assert_close(packed(x), F.linear(x, dense.weight, dense.bias), rtol=1e-5, atol=1e-5)
    assert packed(torch.empty(0, 64)).shape == (0, 32)


@pytest.mark.parametrize("shape", [(512, 512), (128, 512), (1408, 512), (512, 1408)])
def test_rows_do_not_depend_on_the_batch(shape: tuple[int, int]) -> None:
    """A request's row gives the same bits alone in a pair or inside any larger batch."""
    out_features, in_features = shape
    packed = PackedLinear(linear(in_features, out_features, bias=False))
    x = torch.randn(600, in_features) * 0.5
    whole = packed(x)
    for start, count in ((0, 2), (5, 7), (100, 32), (17, 333)):
        assert torch.equal(packed(x[start : start + count]), whole[start : start + count]), (start, count)


def test_can_pack_takes_cpu_float32_only_where_it_is_native() -> None:
    cpu = torch.device("cpu")
    assert can_pack(cpu, torch.float32)
    assert not can_pack(cpu, torch.float16)
    assert not can_pack(torch.device("cuda"), torch.float32)
    assert can_pack(cpu, torch.bfloat16) == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_pack_linears_replaces_only_plain_linears() -> None:
    model = nn.Sequential(linear(8, 8, bias=False), nn.ReLU(), nn.Sequential(linear(8, 4, bias=True)))
    assert pack_linears(model) == 2
    assert [type(m).__name__ for m in model.modules()] == [
        "Sequential",
        "PackedLinear",
        "ReLU",
        "Sequential",
        "PackedLinear",
    ]
    assert pack_linears(model) == 0  # already packed


def test_build_model_packs_every_linear_on_cpu_and_logits_agree() -> None:
    config = MuseConfig.named("tiny", VOCAB)
    packed = build_model(config, seed=3)
    dense = build_model(config, seed=3, cpu_gemm="torch")
    assert not any(type(m) is nn.Linear for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == 7 * config.num_hidden_layers + 1
    assert any(type(m) is nn.Linear for m in dense.modules())
    assert packed.state_dict().keys() == dense.state_dict().keys()
    linear_bytes = sum(m.weight.numel() * 4 for m in packed.modules() if isinstance(m, PackedLinear))
    assert weight_bytes(packed) == weight_bytes(dense) + linear_bytes  # the packed copies are counted
    for name, value in packed.state_dict().items():
        assert torch.equal(value, dense.state_dict()[name]), name

    ids = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(len(ids))
    with torch.inference_mode():
        ours = reference_logits(packed, ids, positions, SequenceKVCache.for_model(config))
        reference = reference_logits(dense, ids, positions, SequenceKVCache.for_model(config))
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), reference.argmax(-1))


def test_build_model_refuses_an_unknown_cpu_gemm() -> None:
    with pytest.raises(ValueError, match="cpu_gemm: unknown value 'mkl'"):
        build_model(MuseConfig.named("tiny", VOCAB), cpu_gemm="mkl")


def test_pack_tied_head_packs_only_a_tied_head() -> None:
    config = MuseConfig.named("tiny", VOCAB)
    assert pack_tied_head(build_model(config, cpu_gemm="torch")) == 0
    tied = build_model(replace(config, tie_word_embeddings=True), seed=2, cpu_gemm="torch")
    hidden = torch.randn(5, config.hidden_size)
    with torch.inference_mode():
        dense_logits = tied.compute_logits(hidden)
        assert pack_tied_head(tied) == 1 and pack_tied_head(tied) == 0  # already packed
        assert isinstance(tied.lm_head, PackedTiedHead) and not list(tied.lm_head.parameters())
        torch.testing.assert_close(tied.compute_logits(hidden), dense_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_logits, hidden @ tied.model.embed_tokens.weight.T, rtol=1e-6, atol=1e-6)
