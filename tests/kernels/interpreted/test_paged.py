"""KV-cache write and paged-attention decode against their references, in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from museserve.model.layers import causal_attention
from museserve.runner.kv_pool import BatchLayout
from museserve_kernels import cache_write, paged_attention
from tests.kernels.support import assert_close

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kv_heads, head_dim", [(1, 16), (2, 40), (3, 128)])
def test_kv_write_puts_rows_at_their_slots_and_skips_padding(dtype: torch.dtype, kv_heads: int, head_dim: int) -> None:
    slots = 37
    caches = [torch.randn(slots, kv_heads, head_dim).to(dtype) for _ in range(2)]
    expected = [c.clone() for c in caches]
    slot_mapping = torch.tensor([5, -1, 36, 0, -1, 17])
    k = torch.randn(6, kv_heads, head_dim).to(dtype)
    v = torch.randn(6, kv_heads, head_dim).to(dtype)
    cache_write.kv_write(k, v, *caches, slot_mapping)
    cache_write.kv_write_reference(k, v, *expected, slot_mapping)
    assert torch.equal(caches[0], expected[0]) and torch.equal(caches[1], expected[1])  # a copy: exact
    assert torch.equal(caches[0][36], k[2]) and torch.equal(caches[1][0], v[3])


def test_kv_write_takes_int32_slots_and_strided_rows() -> None:
    cache, values = torch.zeros(16, 2, 8), torch.zeros(16, 2, 8)
    kv = torch.randn(3, 2, 16)  # k and v as the two halves of each head's row: token and head strides
    k, v = kv[..., :8], kv[..., 8:]
    cache_write.kv_write(k, v, cache, values, torch.tensor([3, 9, -1], dtype=torch.int32))
    assert torch.equal(cache[3], k[0]) and torch.equal(values[9], v[1]) and cache.count_nonzero() == 32


def random_paged_cache(
    lengths: list[int], kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Caches of 64 blocks and, per sequence, a table of distinct shuffled blocks padded with
    garbage ids past its own (the kernel must never read them)."""
    num_blocks = 64
    caches = torch.randn(2, num_blocks * block_size, kv_heads, head_dim).to(dtype)
    width = max(-(-n // block_size) for n in lengths) + 1
    order = torch.randperm(num_blocks)
    tables = torch.full((len(lengths), width), 10_000_000)
    used = 0
    for row, n in enumerate(lengths):
        k = -(-n // block_size)
        tables[row, :k] = order[used : used + k]
        used += k
    return caches[0], caches[1], tables


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_decode(dtype: torch.dtype, group: int, block_size: int) -> None:
    kv_heads, head_dim = 2, 40  # head_dim padded to 64 inside
    lengths = [1, 37, block_size, 130]  # not multiples of the block size, one of exactly one block
    keys, values, tables = random_paged_cache(lengths, kv_heads, head_dim, block_size, dtype)
    q = torch.randn(len(lengths), kv_heads * group, head_dim).to(dtype)
    context_lens = torch.tensor(lengths, dtype=torch.int32)
    out = paged_attention.paged_decode(q, keys, values, tables, context_lens, block_size)
    safe = tables.masked_fill(tables >= 64, 0)  # the reference gathers the whole width, masked
    assert_close(out, paged_attention.paged_decode_reference(q, keys, values, safe, context_lens, block_size))


def test_paged_decode_over_a_batch_layout_equals_causal_attention_per_sequence() -> None:
    """The engine's decode groups (BatchLayout.build -> block tables, lengths) read each sequence's own keys."""
    block_size, kv_heads, heads, d = 4, 2, 8, 16
    lengths = [9, 3, 14]
    tables = [[7, 2, 5], [0], [1, 3, 4, 6]]
    layout = BatchLayout.build(tables, [n - 1 for n in lengths], [1, 1, 1], block_size)
    keys, values = torch.randn(2, 8 * block_size, kv_heads, d)
    q = torch.randn(3, heads, d)
    for group in layout.decode:
        rows = q.index_select(0, group.rows)
        out = paged_attention.paged_decode(rows, keys, values, group.block_tables, group.lengths, block_size)
        for r, i in enumerate(group.rows.tolist()):
            slots = layout.context_slots(i)
            expected = causal_attention(q[i : i + 1], keys[slots], values[slots])
            assert_close(out[r : r + 1], expected)
