"""The physical KV cache: per layer, keys and values in fixed-size blocks on the device.

Shapes: each layer holds k and v of [num_blocks * block_size, kv_heads, head_dim]; the
flat slot of token position p of a sequence is `block_ids[p // bs] * bs + p % bs`.
`PagedStep` binds the pool to one step's batch layout and is the model's attention
backend for that step: it writes the new tokens' k/v into their slots and attends each
sequence's queries over its own slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from museserve.model.config import MuseConfig
from museserve.model.layers import causal_attention


def kv_bytes_per_block(config: MuseConfig, block_size: int, dtype: torch.dtype) -> int:
    return config.kv_cache_bytes_per_token(torch.finfo(dtype).bits // 8) * block_size


class PagedKVPool:
    def __init__(
        self, config: MuseConfig, num_blocks: int, block_size: int, *, dtype: torch.dtype, device: torch.device
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (num_blocks * block_size, config.num_key_value_heads, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass(frozen=True)
class BatchLayout:
    """Where one step's flattened tokens go. Sequence i owns rows
    [query_starts[i], query_starts[i + 1]) of the batch and reads `context_slots[i]`."""

    slot_mapping: Tensor  # [T] long: the slot each new token's k/v is written to
    query_starts: tuple[int, ...]  # len = num_sequences + 1
    context_slots: tuple[Tensor, ...]  # per sequence [context_len] long: its slots, in position order


class PagedStep:
    def __init__(self, pool: PagedKVPool, layout: BatchLayout):
        self.pool = pool
        self.layout = layout

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        keys[self.layout.slot_mapping] = k
        values[self.layout.slot_mapping] = v
        return paged_attention_reference(q, keys, values, self.layout)


def paged_attention_reference(q: Tensor, keys: Tensor, values: Tensor, layout: BatchLayout) -> Tensor:
    """q [T, heads, d] over each sequence's own slots; the torch reference a fused kernel
    must match. keys/values [slots, kv_heads, d] already hold this step's tokens."""
    out = torch.empty_like(q)
    starts = layout.query_starts
    for i, slots in enumerate(layout.context_slots):
        rows = slice(starts[i], starts[i + 1])
        out[rows] = causal_attention(q[rows], keys[slots], values[slots])
    return out
