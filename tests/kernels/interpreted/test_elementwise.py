"""add+RMSNorm, rotary and SiLU-and-mul against their references, in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from museserve.model.config import RopeScaling
from museserve.model.layers import RotaryEmbedding
from museserve_kernels import norm, rope
from museserve_kernels.activation import silu_and_mul, silu_and_mul_reference, silu_mul, silu_mul_reference
from tests.kernels.support import assert_close

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, hidden", [(1, 64), (5, 70), (3, 257)])
def test_add_rmsnorm(dtype: torch.dtype, rows: int, hidden: int) -> None:
    x, residual = torch.randn(rows, hidden, dtype=dtype), torch.randn(rows, hidden, dtype=dtype)
    weight = torch.randn(hidden, dtype=dtype)
    out, summed = norm.add_rmsnorm(x, residual, weight, 1e-5)
    ref_out, ref_summed = norm.add_rmsnorm_reference(x, residual, weight, 1e-5)
    assert_close(summed, ref_summed)
    assert_close(out, ref_out)
    assert_close(norm.rmsnorm(x, weight, 1e-5), norm.rmsnorm_reference(x, weight, 1e-5))


def test_rmsnorm_keeps_leading_dims_strided_rows_and_promotes_to_the_weight_dtype() -> None:
    x = torch.randn(2, 3, 96, dtype=torch.bfloat16)[:, :, :48]  # rows strided by 96
    weight = torch.randn(48)  # float32: the reference's product is float32
    out = norm.rmsnorm(x, weight, 1e-6)
    assert out.shape == (2, 3, 48) and out.dtype == torch.float32
    assert_close(out, norm.rmsnorm_reference(x, weight, 1e-6), rounded_via=torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens, q_heads, kv_heads, head_dim", [(1, 4, 4, 16), (5, 8, 2, 64), (3, 6, 3, 40)])
def test_rotary_in_place_matches_the_reference(
    dtype: torch.dtype, tokens: int, q_heads: int, kv_heads: int, head_dim: int
) -> None:
    # Our cos/sin: llama3-scaled frequencies at arbitrary (long-context) positions per token.
    scaling = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    positions = torch.randint(0, 262_144, (tokens,))
    cos, sin = RotaryEmbedding(head_dim, 1e6, scaling)(positions, dtype)
    q, k = torch.randn(tokens, q_heads, head_dim, dtype=dtype), torch.randn(tokens, kv_heads, head_dim, dtype=dtype)
    ref_q, ref_k = rope.rotary_reference(q, k, cos, sin)
    q_out, k_out = rope.rotary_(q, k, cos, sin)
    assert q_out is q and k_out is k  # in place
    assert_close(q, ref_q)
    assert_close(k, ref_k)


def test_rotary_on_views_of_one_qkv_projection() -> None:
    tokens, heads, kv_heads, d = 4, 4, 2, 32
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * d)
    q = qkv[:, : heads * d].view(tokens, heads, d)  # token stride (heads + 2 kv_heads) * d
    k = qkv[:, heads * d : (heads + kv_heads) * d].view(tokens, kv_heads, d)
    v_before = qkv[:, (heads + kv_heads) * d :].clone()
    cos, sin = RotaryEmbedding(d, 10_000.0, None)(torch.arange(tokens), torch.float32)
    ref_q, ref_k = rope.rotary_reference(q, k, cos, sin)
    rope.rotary_(q, k, cos, sin)
    assert_close(q, ref_q)
    assert_close(k, ref_k)
    assert torch.equal(qkv[:, (heads + kv_heads) * d :], v_before)  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, n", [(1, 16), (7, 33), (2, 1500)])
def test_silu_mul(dtype: torch.dtype, rows: int, n: int) -> None:
    gate, up = torch.randn(rows, n, dtype=dtype) * 3, torch.randn(rows, n, dtype=dtype)
    assert_close(silu_mul(gate, up), silu_mul_reference(gate, up))
    halves = torch.randn(rows, 2 * n, dtype=dtype)  # gate and up as two strided views of one tensor
    assert_close(silu_and_mul(halves), silu_and_mul_reference(halves))
