"""Building blocks of the decoder: RMSNorm, rotary embedding, GQA attention, SwiGLU MLP, tied LM head."""

from __future__ import annotations

import math
from typing import Protocol, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from museserve.model import ops
from museserve.model.config import MuseConfig
from museserve.model.rope_scaling import AnyRopeScaling, LinearRopeScaling, RopeScaling


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight, the norm computed in float32.

    With `residual`, the input is first added to it and the sum is returned as the new
    residual stream: one fused add+norm kernel on CUDA (`ops.add_rmsnorm`).
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    @overload
    def forward(self, x: Tensor, residual: None = None) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if residual is None:
            return ops.rmsnorm(x, self.weight, self.eps)
        return ops.add_rmsnorm(x, residual, self.weight, self.eps)


def _unscaled_inverse_frequencies(head_dim: int, theta: float) -> Tensor:
    """theta^(-2i / head_dim) for i < head_dim // 2, float64 on the CPU."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    return 1.0 / (theta**exponents)


def linear_inverse_frequencies(head_dim: int, theta: float, scaling: LinearRopeScaling) -> Tensor:
    """Inverse frequencies [head_dim // 2] (float32, CPU) divided by the factor: the angle at
    position p is the unscaled angle at p / factor."""
    return (_unscaled_inverse_frequencies(head_dim, theta) / scaling.factor).float()


def llama3_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> Tensor:
    """Inverse frequencies [head_dim // 2] (float32, CPU), stretched as llama3 prescribes."""
    inv_freq = _unscaled_inverse_frequencies(head_dim, theta)
    if scaling is not None:
        wavelength = 2 * math.pi / inv_freq
        original = scaling.original_max_position_embeddings
        short_wavelength = original / scaling.high_freq_factor
        long_wavelength = original / scaling.low_freq_factor
        # 0 at the long-wavelength edge (fully stretched), 1 at the short one (unchanged).
        blend = (original / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        interpolated = (1 - blend) * inv_freq / scaling.factor + blend * inv_freq
        inv_freq = torch.where(
            wavelength < short_wavelength,
            inv_freq,
            torch.where(wavelength > long_wavelength, inv_freq / scaling.factor, interpolated),
        )
    return inv_freq.float()


def inverse_frequencies(head_dim: int, theta: float, scaling: AnyRopeScaling | None) -> Tensor:
    """Inverse frequencies [head_dim // 2] (float32, CPU) of any served scaling (None: unscaled)."""
    if isinstance(scaling, LinearRopeScaling):
        return linear_inverse_frequencies(head_dim, theta, scaling)
    return llama3_inverse_frequencies(head_dim, theta, scaling)


class RotaryEmbedding(nn.Module):
    """cos/sin for the positions asked, [T, head_dim] each; no per-position table is kept.

    The inverse frequencies are a plain attribute rather than a buffer so that a model
    materialised from the meta device (`to_empty`) never holds uninitialised values.
    """

    def __init__(self, head_dim: int, theta: float, scaling: AnyRopeScaling | None) -> None:
        super().__init__()
        self.head_dim = head_dim
        self._inv_freq_cpu = inverse_frequencies(head_dim, theta, scaling)
        self._inv_freq_by_device: dict[torch.device, Tensor] = {}

    def inverse_frequencies(self, device: torch.device) -> Tensor:
        if device not in self._inv_freq_by_device:
            self._inv_freq_by_device[device] = self._inv_freq_cpu.to(device)
        return self._inv_freq_by_device[device]

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        inv_freq = self.inverse_frequencies(positions.device)
        angles = positions.float()[:, None] * inv_freq[None, :]  # [T, head_dim // 2]
        angles = torch.cat((angles, angles), dim=-1)  # [T, head_dim], half-split layout as in HF
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [T, heads, head_dim]; cos/sin: [T, head_dim]. Rotates pairs (i, i + head_dim/2), out of place."""
    return ops.rotate(x, cos, sin)


class AttentionBackend(Protocol):
    """Where attention reads and writes KV: one sequence's contiguous cache, or a paged
    pool shared by a batch (the backend knows which new rows belong to which sequence)."""

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Stores the new k/v [T, kv_heads, head_dim] and returns attention [T, heads, head_dim]
        of the new queries q [T, heads, head_dim] over all their sequence's keys so far."""
        ...


def causal_attention(q: Tensor, k_all: Tensor, v_all: Tensor) -> Tensor:
    """One sequence: q [T, heads, d] are its last T tokens; k_all/v_all [S, kv_heads, d] with S >= T
    hold all of its tokens. New token i sits at index S - T + i and sees keys 0..S - T + i."""
    num_new, num_cached = q.shape[0], k_all.shape[0] - q.shape[0]
    if num_cached == 0:
        mask, causal = None, True
    else:
        key_idx = torch.arange(k_all.shape[0], device=q.device)
        query_idx = torch.arange(num_new, device=q.device) + num_cached
        mask, causal = key_idx[None, :] <= query_idx[:, None], False
    # A leading batch dimension of 1: PyTorch's fused CPU kernel takes 4-D inputs only.
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None],  # [1, heads, T, d]
        k_all.transpose(0, 1)[None],  # [1, kv_heads, S, d]
        v_all.transpose(0, 1)[None],
        attn_mask=mask,
        is_causal=causal,
        enable_gqa=q.shape[1] != k_all.shape[1],
    )
    return out[0].transpose(0, 1)  # [T, heads, d]


class Attention(nn.Module):
    """Grouped-query attention: query head h reads KV head h // (heads // kv_heads). With
    `config.qk_norm` (Qwen3) each query and key head is RMS-normalised over head_dim before RoPE."""

    def __init__(self, config: MuseConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * d, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * d, hidden, bias=False)
        self.q_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(d, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, hidden: Tensor, cos: Tensor, sin: Tensor, cache: AttentionBackend) -> Tensor:
        num_new = hidden.shape[0]
        # Head counts come from the projections' shapes, not the config: under tensor parallelism
        # (DeepSpeed AutoTP) q/k/v hold only this rank's heads, heads / tp and kv_heads / tp.
        q = self.q_proj(hidden).view(num_new, -1, self.head_dim)
        k = self.k_proj(hidden).view(num_new, -1, self.head_dim)
        v = self.v_proj(hidden).view(num_new, -1, self.head_dim)
        num_heads = q.shape[1]
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # per head: over the last dim, head_dim
        q, k = ops.rotary(q, k, cos, sin)  # in place on CUDA: q and k are fresh projections
        out = cache.attend(self.layer_idx, q, k, v)  # [T, heads, head_dim]
        return self.o_proj(out.reshape(num_new, num_heads * self.head_dim))


class SwiGLUMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(ops.silu_mul(self.gate_proj(x), self.up_proj(x)))


class TiedLMHead(nn.Module):
    """The LM head of a model with tied word embeddings: logits = hidden E^T, E the embedding
    matrix [vocab, hidden]. It holds no parameter: E stays the embedding's alone (the state dict
    has no `lm_head.weight`), and the model passes it in at each call."""

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        """hidden [..., hidden], embedding [vocab, hidden] -> [..., vocab] in hidden's dtype."""
        return F.linear(hidden, embedding)
