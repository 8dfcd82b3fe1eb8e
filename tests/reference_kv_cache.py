"""A contiguous KV cache for one sequence: the reference attention backend the model tests
compare the paged pool against, and `reference_logits`, the plain-text forward over it."""

from __future__ import annotations

import torch
from torch import Tensor

from museserve.model.config import MuseConfig
from museserve.model.layers import causal_attention
from museserve.model.muse import MuseForCausalLM


class SequenceKVCache:
    """Per layer, keys and values of shape [num_tokens, num_kv_heads, head_dim].

    Storage grows by doubling, so appending one token at a time costs amortised O(1) copies.
    Layers are appended in order during a forward pass; `num_tokens` counts the tokens
    present in every layer, i.e. those of completed forward passes.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        initial_capacity: int = 256,
    ) -> None:
        if num_layers <= 0 or num_kv_heads <= 0 or head_dim <= 0 or initial_capacity <= 0:
            raise ValueError("num_layers, num_kv_heads, head_dim and initial_capacity must be positive")
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self._initial_capacity = initial_capacity
        self._keys: list[Tensor | None] = [None] * num_layers  # [capacity, kv_heads, head_dim]
        self._values: list[Tensor | None] = [None] * num_layers
        self._lengths = [0] * num_layers

    @classmethod
    def for_model(
        cls,
        config: MuseConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        initial_capacity: int = 256,
    ) -> SequenceKVCache:
        return cls(
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.head_dim,
            dtype=dtype,
            device=device,
            initial_capacity=initial_capacity,
        )

    @property
    def num_tokens(self) -> int:
        return min(self._lengths)

    def append(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k/v [T, kv_heads, head_dim]; return views of all of this layer's k/v [S, ...]."""
        expected = (self.num_kv_heads, self.head_dim)
        if k.shape != v.shape or k.dim() != 3 or tuple(k.shape[1:]) != expected:
            raise ValueError(
                f"k and v must both be [T, {self.num_kv_heads}, {self.head_dim}], "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        start = self._lengths[layer_idx]
        end = start + k.shape[0]
        self._reserve(layer_idx, end)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        assert keys is not None and values is not None
        keys[start:end] = k
        values[start:end] = v
        self._lengths[layer_idx] = end
        return keys[:end], values[:end]

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k_all, v_all = self.append(layer_idx, k, v)
        return causal_attention(q, k_all, v_all)

    def layer(self, layer_idx: int) -> tuple[Tensor, Tensor]:
        """This layer's stored k/v, [num_tokens_in_layer, kv_heads, head_dim] each."""
        length = self._lengths[layer_idx]
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        if keys is None or values is None:
            empty = torch.empty(0, self.num_kv_heads, self.head_dim, dtype=self.dtype, device=self.device)
            return empty, empty
        return keys[:length], values[:length]

    def _reserve(self, layer_idx: int, needed: int) -> None:
        keys = self._keys[layer_idx]
        capacity = 0 if keys is None else keys.shape[0]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, self._initial_capacity)
        shape = (new_capacity, self.num_kv_heads, self.head_dim)
        new_keys = torch.empty(shape, dtype=self.dtype, device=self.device)
        new_values = torch.empty(shape, dtype=self.dtype, device=self.device)
        length = self._lengths[layer_idx]
        if keys is not None and length:
            values = self._values[layer_idx]
            assert values is not None
            new_keys[:length] = keys[:length]
            new_values[:length] = values[:length]
        self._keys[layer_idx] = new_keys
        self._values[layer_idx] = new_values


def reference_logits(model: MuseForCausalLM, input_ids: Tensor, positions: Tensor, cache: SequenceKVCache) -> Tensor:
    """[T] token ids at `positions` -> float32 logits [T, vocab]; appends the T tokens to `cache`."""
    return model.compute_logits(model(model.embed(input_ids), positions, cache))
