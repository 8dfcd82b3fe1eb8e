"""KV-cache write and paged-attention decode against their references, in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from museserve.model.layers import causal_attention
from museserve.runner.kv_pool import BatchLayout
from museserve_kernels import cache_write, paged_attention, split_k
from tests.kernels.support import assert_close, readable, scattered_paged_cache

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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("block_size", [4, 16])
def test_paged_decode(dtype: torch.dtype, group: int, block_size: int) -> None:
    kv_heads, head_dim = 2, 40  # head_dim padded to 64 inside
    lengths = [1, 37, block_size, 130]  # not multiples of the block size, one of exactly one block
    keys, values, tables = scattered_paged_cache(lengths, kv_heads, head_dim, block_size, dtype)
    q = torch.randn(len(lengths), kv_heads * group, head_dim).to(dtype)
    context_lens = torch.tensor(lengths, dtype=torch.int32)
    assert split_k.decode_splits(len(lengths), kv_heads, tables.shape[1] * block_size, 132) == 1
    out = paged_attention.paged_decode(q, keys, values, tables, context_lens, block_size)
    safe = readable(tables, keys, block_size)  # the reference gathers the whole width, masked
    assert_close(out, paged_attention.paged_decode_reference(q, keys, values, safe, context_lens, block_size))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group, block_size, width", [(1, 4, 2048), (4, 16, 4096)])
def test_split_decode_over_wide_tables(dtype: torch.dtype, group: int, block_size: int, width: int) -> None:
    """Tables far wider than the rows select several splits; a row's keys are shared among them by
    its own length, so short rows leave most splits empty and the merge must ignore those."""
    kv_heads, head_dim = 2, 40
    lengths = [1, 37, 700, 1500]  # one key; 37, all in split 0; several tiles per split
    keys, values, tables = scattered_paged_cache(lengths, kv_heads, head_dim, block_size, dtype, width // block_size)
    splits = split_k.decode_splits(len(lengths), kv_heads, width, 132)
    assert splits == width // split_k.SPLIT_MIN_KEYS > 1  # 4 and 8 splits
    q = torch.randn(len(lengths), kv_heads * group, head_dim).to(dtype)
    context_lens = torch.tensor(lengths)
    out = paged_attention.paged_decode(q, keys, values, tables, context_lens, block_size)
    safe = readable(tables, keys, block_size)
    assert_close(out, paged_attention.paged_decode_reference(q, keys, values, safe, context_lens, block_size))


@pytest.mark.parametrize("width", [64, 8192], ids=["one-kernel", "split"])
def test_paged_decode_of_a_row_of_no_keys_is_zeros(width: int) -> None:
    """Padding rows of a captured batch (length 0) give zeros, not NaN, on both paths, beside a real row."""
    keys, values, tables = scattered_paged_cache([50, 0], 1, 16, 16, torch.float32, width // 16)
    q = torch.randn(2, 2, 16)
    out = paged_attention.paged_decode(q, keys, values, tables, torch.tensor([50, 0]), 16)
    assert torch.equal(out[1], torch.zeros(2, 16))
    expected = paged_attention.paged_decode_reference(q[:1], keys, values, tables[:1, :4], torch.tensor([50]), 16)
    assert_close(out[:1], expected)


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
