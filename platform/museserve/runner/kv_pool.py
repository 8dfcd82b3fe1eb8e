"""The physical KV cache: per layer, keys and values in fixed-size blocks on the device.

Shapes: each layer holds k and v of [num_blocks * block_size, kv_heads, head_dim]; the
flat slot of token position p of a sequence is `block_ids[p // bs] * bs + p % bs`.
`PagedStep` binds the pool to one step's batch layout and is the model's attention
backend for that step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend

from museserve.model import ops
from museserve.model.config import MuseConfig
from museserve.model.layers import causal_attention

# cuDNN's attention builds a plan per new sequence length, hundreds of milliseconds each, and a
# serving step's lengths are new almost every step; the other kernels need no plan.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def kv_bytes_per_block(config: MuseConfig, block_size: int, dtype: torch.dtype) -> int:
    return config.kv_cache_bytes_per_token(torch.finfo(dtype).bits // 8) * block_size


class PagedKVPool:
    def __init__(
        self, config: MuseConfig, num_blocks: int, block_size: int, *, dtype: torch.dtype, device: torch.device
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        # One slot past the blocks, never handed out: idle rows of a padded batch write there.
        self.scratch_slot = num_blocks * block_size
        shape = (num_blocks * block_size + 1, config.num_key_value_heads, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass(frozen=True)
class DecodeBatch:
    """Sequences computing one token this step, attended in one batched call (`ops.paged_decode`).
    Row r reads positions 0..lengths[r] - 1 through its block table; the rest of the row is padding."""

    rows: Tensor  # [B] long: their rows in the flattened batch
    block_tables: Tensor  # [B, max_blocks] long: each one's block ids, padded with block 0
    lengths: Tensor  # [B] long: context lengths, each >= 1, the new token included

    def to(self, device: torch.device) -> DecodeBatch:
        return DecodeBatch(self.rows.to(device), self.block_tables.to(device), self.lengths.to(device))


@dataclass(frozen=True)
class BatchLayout:
    """Where one step's flattened tokens go. Sequence i owns rows
    [query_starts[i], query_starts[i + 1]) of the batch and reads `context_slots(i)`, the slots
    of its positions 0..context_lens[i] - 1; sequences computing one token are attended in the
    `decode` groups instead. Built on the CPU; `to` moves it to the device in a few copies."""

    slot_mapping: Tensor  # [T] long: the slot each new token's k/v is written to
    block_slots: Tensor  # [sum over sequences of num_blocks * block_size] long: each one's blocks as slots
    slot_starts: tuple[int, ...]  # where sequence i's slots begin in block_slots
    context_lens: tuple[int, ...]
    query_starts: tuple[int, ...]  # len = num_sequences + 1
    decode: tuple[DecodeBatch, ...] = ()
    chunked: tuple[int, ...] = ()  # indices of the sequences not in `decode`

    def context_slots(self, i: int) -> Tensor:
        """[context_lens[i]] long: sequence i's slots in position order (a view)."""
        return self.block_slots[self.slot_starts[i] : self.slot_starts[i] + self.context_lens[i]]

    def to(self, device: torch.device) -> BatchLayout:
        return replace(
            self,
            slot_mapping=self.slot_mapping.to(device),
            block_slots=self.block_slots.to(device),
            decode=tuple(d.to(device) for d in self.decode),
        )

    @staticmethod
    def build(
        block_tables: Sequence[Sequence[int]],
        first_positions: Sequence[int],
        num_new_tokens: Sequence[int],
        block_size: int,
        decode_group: int = 8,
    ) -> BatchLayout:
        """Per sequence: its block ids, the position of its first new token and how many it computes.
        Decode sequences are sorted by context length and cut into groups of `decode_group`, so
        each group pads to a near length."""
        bs = block_size
        context_lens = tuple(f + n for f, n in zip(first_positions, num_new_tokens, strict=True))
        num_blocks = [-(-length // bs) for length in context_lens]
        table: list[int] = []
        for ids, k in zip(block_tables, num_blocks, strict=True):
            if len(ids) < k:
                raise ValueError(f"a sequence of {k * bs} tokens holds only {len(ids)} blocks")
            table.extend(ids[:k])
        block_slots = (torch.tensor(table, dtype=torch.long)[:, None] * bs + torch.arange(bs)).flatten()
        slot_starts = tuple(accumulate((k * bs for k in num_blocks[:-1]), initial=0))
        new_slots: list[int] = []
        for start, first, length in zip(slot_starts, first_positions, context_lens, strict=True):
            new_slots.extend(range(start + first, start + length))
        slot_mapping = block_slots[torch.tensor(new_slots, dtype=torch.long)]
        query_starts = tuple(accumulate(num_new_tokens, initial=0))
        layout = BatchLayout(slot_mapping, block_slots, slot_starts, context_lens, query_starts)
        single = sorted((i for i, n in enumerate(num_new_tokens) if n == 1), key=lambda i: context_lens[i])
        if len(single) < 2:
            return replace(layout, chunked=tuple(range(len(context_lens))))
        groups = [single[g : g + decode_group] for g in range(0, len(single), decode_group)]
        decode = tuple(_decode_batch(group, layout, bs) for group in groups)
        chunked = tuple(i for i, n in enumerate(num_new_tokens) if n != 1)
        return replace(layout, decode=decode, chunked=chunked)


def _decode_batch(group: list[int], layout: BatchLayout, block_size: int) -> DecodeBatch:
    lengths = torch.tensor([layout.context_lens[i] for i in group])
    starts = torch.tensor([layout.slot_starts[i] for i in group])
    blocks = -(-lengths // block_size)  # [B] blocks each sequence uses
    columns = torch.arange(int(blocks.max()))
    own = columns[None, :] < blocks[:, None]  # [B, max_blocks]
    # A block's first slot, divided by the block size, is its id; padding reads index 0 (then is
    # zeroed): indices past a row's own blocks may run off block_slots.
    index = (starts[:, None] + columns[None, :] * block_size).masked_fill_(~own, 0)
    block_tables = (layout.block_slots[index] // block_size).masked_fill_(~own, 0)
    rows = torch.tensor([layout.query_starts[i] for i in group], dtype=torch.long)
    return DecodeBatch(rows, block_tables, lengths)


class PagedStep:
    """The attention backend of one step: every layer writes its new k/v to the layout's slots and
    attends each sequence over its own. A chunk that starts its sequence attends the k/v it just
    wrote straight from the projections; later chunks and the decode groups read the pool."""

    def __init__(self, pool: PagedKVPool, layout: BatchLayout):
        self.pool = pool
        self.layout = layout
        # Per decode group, the reference's gather index: built by the first layer, read by all.
        self._gathers: dict[int, tuple[Tensor, Tensor] | None] = {}

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] of this step's tokens -> [T, heads, d]."""
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        ops.kv_write(k, v, keys, values, self.layout.slot_mapping)
        layout, block_size = self.layout, self.pool.block_size
        out = torch.empty_like(q)
        starts = layout.query_starts
        # index_select, not advanced indexing: the gather is most of a decode step's memory traffic.
        for i in layout.chunked:
            rows = slice(starts[i], starts[i + 1])
            if layout.context_lens[i] == starts[i + 1] - starts[i]:  # no earlier tokens: nothing to gather
                out[rows] = causal_attention(q[rows], k[rows], v[rows])
                continue
            slots = layout.context_slots(i)
            out[rows] = causal_attention(q[rows], keys.index_select(0, slots), values.index_select(0, slots))
        for index, d in enumerate(layout.decode):
            group_q = q.index_select(0, d.rows)
            if index not in self._gathers:
                self._gathers[index] = ops.decode_gather(group_q, d.block_tables, d.lengths, block_size)
            gather = self._gathers[index]
            out[d.rows] = ops.paged_decode(group_q, keys, values, d.block_tables, d.lengths, block_size, gather)
        return out
