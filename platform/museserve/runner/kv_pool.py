"""The physical KV cache: per layer, keys and values in fixed-size blocks on the device.

Shapes: each layer holds k and v of [num_blocks * block_size, kv_heads, head_dim]; the
flat slot of token position p of a sequence is `block_ids[p // bs] * bs + p % bs`.
`BatchLayout` says where one step's tokens go and which blocks each sequence reads;
`PagedStep` (paged_step.py) binds the two for one step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import accumulate

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend

from museserve.model.config import MuseConfig

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
    sequences: tuple[int, ...] = ()  # their indices in the layout (empty in a captured graph)

    def to(self, device: torch.device) -> DecodeBatch:
        return replace(
            self, rows=self.rows.to(device), block_tables=self.block_tables.to(device), lengths=self.lengths.to(device)
        )


@dataclass(frozen=True)
class PrefillBatch:
    """The sequences computing several tokens, packed for one paged prefill call (`ops.paged_prefill`):
    chunk i owns rows query_starts[i]..query_starts[i + 1] - 1 of the packed queries and is the
    last tokens of its context_lens[i] positions."""

    rows: Tensor  # [Tc] long: the packed rows in the flattened batch
    block_tables: Tensor  # [N, max_blocks] int32, padded with block 0
    query_starts: Tensor  # [N + 1] int32
    context_lens: Tensor  # [N] int32
    max_query_len: int
    all_rows: bool  # the packed rows are the whole batch, in order: no gather needed

    def to(self, device: torch.device) -> PrefillBatch:
        return replace(
            self,
            rows=self.rows.to(device),
            block_tables=self.block_tables.to(device),
            query_starts=self.query_starts.to(device),
            context_lens=self.context_lens.to(device),
        )


@dataclass(frozen=True)
class BatchLayout:
    """Where one step's flattened tokens go. Sequence i owns rows
    [query_starts[i], query_starts[i + 1]) of the batch and attends its positions
    0..context_lens[i] - 1, held by `block_tables[i]`. Sequences computing one token are
    attended in the `decode` groups, the others (`chunked`) one by one on a CPU or packed in
    `prefill` for the kernel. Built on the CPU; `to` moves it to the device in a few copies."""

    slot_mapping: Tensor  # [T] long: the slot each new token's k/v is written to
    block_tables: tuple[tuple[int, ...], ...]  # per sequence: the blocks its context occupies
    context_lens: tuple[int, ...]
    query_starts: tuple[int, ...]  # len = num_sequences + 1
    block_size: int
    decode: tuple[DecodeBatch, ...] = ()
    chunked: tuple[int, ...] = ()  # indices of the sequences not in `decode`
    prefill: PrefillBatch | None = None  # the chunked sequences, packed: built for the kernel only

    def context_slots(self, i: int) -> Tensor:
        """[context_lens[i]] long: sequence i's slots in position order (for references)."""
        bs, positions = self.block_size, torch.arange(self.context_lens[i])
        return torch.tensor(self.block_tables[i], dtype=torch.long)[positions // bs] * bs + positions % bs

    def to(self, device: torch.device) -> BatchLayout:
        return replace(
            self,
            slot_mapping=self.slot_mapping.to(device),
            decode=tuple(d.to(device) for d in self.decode),
            prefill=self.prefill.to(device) if self.prefill is not None else None,
        )

    @staticmethod
    def build(
        block_tables: Sequence[Sequence[int]],
        first_positions: Sequence[int],
        num_new_tokens: Sequence[int],
        block_size: int,
        decode_group: int = 8,
        *,
        pack_prefill: bool = False,
    ) -> BatchLayout:
        """Per sequence: its block ids, the position of its first new token and how many it computes.
        Decode sequences are sorted by context length and cut into groups of `decode_group`, so
        each group pads to a near length. `pack_prefill`: also pack the chunked sequences for
        the paged prefill kernel."""
        bs = block_size
        context_lens = tuple(f + n for f, n in zip(first_positions, num_new_tokens, strict=True))
        tables: list[tuple[int, ...]] = []
        new_slots: list[int] = []
        for ids, first, length in zip(block_tables, first_positions, context_lens, strict=True):
            if len(ids) * bs < length:
                raise ValueError(f"a sequence of {length} tokens holds only {len(ids)} blocks of {bs}")
            tables.append(tuple(ids[: -(-length // bs)]))
            new_slots.extend(ids[p // bs] * bs + p % bs for p in range(first, length))
        query_starts = tuple(accumulate(num_new_tokens, initial=0))
        single = sorted((i for i, n in enumerate(num_new_tokens) if n == 1), key=lambda i: context_lens[i])
        if len(single) < 2:
            single = []
        in_decode = set(single)
        chunked = tuple(i for i in range(len(context_lens)) if i not in in_decode)
        layout = BatchLayout(
            torch.tensor(new_slots, dtype=torch.long), tuple(tables), context_lens, query_starts, bs, chunked=chunked
        )
        groups = [single[g : g + decode_group] for g in range(0, len(single), decode_group)]
        decode = tuple(_decode_batch(group, layout) for group in groups)
        prefill = _prefill_batch(layout) if pack_prefill and chunked else None
        return replace(layout, decode=decode, prefill=prefill)


def _padded(tables: Sequence[tuple[int, ...]]) -> list[list[int]]:
    width = max(len(t) for t in tables)
    return [list(t) + [0] * (width - len(t)) for t in tables]


def _decode_batch(group: list[int], layout: BatchLayout) -> DecodeBatch:
    lengths = torch.tensor([layout.context_lens[i] for i in group])
    block_tables = torch.tensor(_padded([layout.block_tables[i] for i in group]), dtype=torch.long)
    rows = torch.tensor([layout.query_starts[i] for i in group], dtype=torch.long)
    return DecodeBatch(rows, block_tables, lengths, tuple(group))


def _prefill_batch(layout: BatchLayout) -> PrefillBatch:
    starts, chunked = layout.query_starts, layout.chunked
    counts = [starts[i + 1] - starts[i] for i in chunked]
    rows = [r for i in chunked for r in range(starts[i], starts[i + 1])]
    return PrefillBatch(
        rows=torch.tensor(rows, dtype=torch.long),
        block_tables=torch.tensor(_padded([layout.block_tables[i] for i in chunked]), dtype=torch.int32),
        query_starts=torch.tensor(list(accumulate(counts, initial=0)), dtype=torch.int32),
        context_lens=torch.tensor([layout.context_lens[i] for i in chunked], dtype=torch.int32),
        max_query_len=max(counts),
        all_rows=rows == list(range(starts[-1])),
    )
