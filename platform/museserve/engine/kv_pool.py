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
import torch.nn.functional as F
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
class DecodeBatch:
    """Sequences computing one token this step, attended in one batched call.
    Row r of the batch reads slots[r, :lengths[r]]; the rest of the row is padding."""

    rows: Tensor  # [B] long: their rows in the flattened batch
    slots: Tensor  # [B, max_context] long, padded with slot 0
    mask: Tensor  # [B, 1, 1, max_context] bool: True where a key is the sequence's own


@dataclass(frozen=True)
class BatchLayout:
    """Where one step's flattened tokens go. Sequence i owns rows
    [query_starts[i], query_starts[i + 1]) of the batch and reads `context_slots[i]`;
    sequences computing one token are attended in the `decode` groups instead."""

    slot_mapping: Tensor  # [T] long: the slot each new token's k/v is written to
    query_starts: tuple[int, ...]  # len = num_sequences + 1
    context_slots: tuple[Tensor, ...]  # per sequence [context_len] long: its slots, in position order
    decode: tuple[DecodeBatch, ...] = ()
    chunked: tuple[int, ...] = ()  # indices of the sequences not in `decode`

    @staticmethod
    def build(slot_mapping: Tensor, query_starts: tuple[int, ...], context_slots: tuple[Tensor, ...]) -> BatchLayout:
        num_new = [query_starts[i + 1] - query_starts[i] for i in range(len(context_slots))]
        single = sorted((i for i, n in enumerate(num_new) if n == 1), key=lambda i: context_slots[i].shape[0])
        if len(single) < 2:
            return BatchLayout(slot_mapping, query_starts, context_slots, (), tuple(range(len(context_slots))))
        # Sorted by context length and cut into groups, so each group pads to a near length.
        groups = [single[g : g + DECODE_GROUP] for g in range(0, len(single), DECODE_GROUP)]
        decode = tuple(_decode_batch(group, query_starts, context_slots, slot_mapping.device) for group in groups)
        chunked = tuple(i for i, n in enumerate(num_new) if n != 1)
        return BatchLayout(slot_mapping, query_starts, context_slots, decode, chunked)


DECODE_GROUP = 8  # sequences per batched decode call: less padding, few calls


def _decode_batch(
    group: list[int], query_starts: tuple[int, ...], context_slots: tuple[Tensor, ...], device: torch.device
) -> DecodeBatch:
    lengths = torch.tensor([context_slots[i].shape[0] for i in group])
    width = int(lengths.max())
    slots = torch.zeros(len(group), width, dtype=torch.long, device=device)
    for row, i in enumerate(group):
        slots[row, : context_slots[i].shape[0]] = context_slots[i]
    mask = (torch.arange(width)[None, :] < lengths[:, None])[:, None, None, :]
    rows = torch.tensor([query_starts[i] for i in group], dtype=torch.long)
    return DecodeBatch(rows.to(device), slots, mask.to(device))


class PagedStep:
    def __init__(self, pool: PagedKVPool, layout: BatchLayout):
        self.pool = pool
        self.layout = layout

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        keys.index_copy_(0, self.layout.slot_mapping, k)
        values.index_copy_(0, self.layout.slot_mapping, v)
        return paged_attention_reference(q, keys, values, self.layout)


def paged_attention_reference(q: Tensor, keys: Tensor, values: Tensor, layout: BatchLayout) -> Tensor:
    """q [T, heads, d] over each sequence's own slots; the torch reference a fused kernel
    must match. keys/values [slots, kv_heads, d] already hold this step's tokens."""
    out = torch.empty_like(q)
    starts = layout.query_starts
    # index_select, not advanced indexing: the gather is most of a decode step's memory traffic.
    for i in layout.chunked:
        rows = slice(starts[i], starts[i + 1])
        slots = layout.context_slots[i]
        out[rows] = causal_attention(q[rows], keys.index_select(0, slots), values.index_select(0, slots))
    for d in layout.decode:
        batch, width = d.slots.shape
        flat = d.slots.flatten()
        attended = F.scaled_dot_product_attention(
            q.index_select(0, d.rows)[:, :, None, :],  # [B, heads, 1, d]
            keys.index_select(0, flat).view(batch, width, *keys.shape[1:]).transpose(1, 2),  # [B, kv_heads, W, d]
            values.index_select(0, flat).view(batch, width, *values.shape[1:]).transpose(1, 2),
            attn_mask=d.mask,
            enable_gqa=q.shape[1] != keys.shape[1],
        )
        out[d.rows] = attended[:, :, 0, :]
    return out
