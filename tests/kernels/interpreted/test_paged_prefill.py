"""Paged-attention prefill/extend against its reference, and the reference against dense causal
attention of whole sequences, in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from museserve_kernels.paged_prefill import paged_prefill, paged_prefill_reference
from tests.kernels.support import assert_close, scattered_paged_cache

DTYPES = [torch.float32, torch.bfloat16]


def starts_of(num_new: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(num_new).cumsum(0).tolist()])


def slots_of(table: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    pos = torch.arange(length)
    return table[pos // block_size] * block_size + pos % block_size


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group, block_size", [(1, 16), (2, 4), (4, 16)])
def test_paged_prefill_of_mixed_chunks(dtype: torch.dtype, group: int, block_size: int) -> None:
    kv_heads, head_dim = 2, 40  # head_dim padded to 64 inside
    # (context, new): a first chunk of several query tiles (128 rows each at most); a later chunk
    # over a longer context, starting mid-block; one token; a block-aligned chunk; a sequence with
    # no new tokens this call.
    contexts, num_new = [133, 200, 7, 64, 10], [133, 21, 1, 16, 0]
    keys, values, tables = scattered_paged_cache(contexts, kv_heads, head_dim, block_size, dtype)
    q = torch.randn(sum(num_new), kv_heads * group, head_dim).to(dtype)
    args = (keys, values, tables, starts_of(num_new).int(), torch.tensor(contexts), block_size)
    out = paged_prefill(q, *args, max(num_new))
    assert_close(out, paged_prefill_reference(q, *args))


def test_paged_prefill_of_chunks_equals_dense_causal_attention() -> None:
    """Three chunks of one sequence, each as its own entry of one batch (the same table, growing
    contexts), give together the rows of dense causal attention over the whole sequence."""
    block_size, kv_heads, heads, head_dim, length = 4, 2, 4, 32, 45
    keys, values, tables = scattered_paged_cache([length], kv_heads, head_dim, block_size, torch.float32)
    slots = slots_of(tables[0], length, block_size)
    q = torch.randn(length, heads, head_dim)
    dense = F.scaled_dot_product_attention(
        q.transpose(0, 1), keys[slots].transpose(0, 1), values[slots].transpose(0, 1), is_causal=True, enable_gqa=True
    ).transpose(0, 1)  # [length, heads, d]
    chunks = (tables.expand(3, -1).contiguous(), starts_of([16, 24, 5]), torch.tensor([16, 40, length]))
    assert_close(paged_prefill_reference(q, keys, values, *chunks, block_size), dense)
    assert_close(paged_prefill(q, keys, values, *chunks, block_size, 24), dense)
    last = (tables, torch.tensor([0, 5]), torch.tensor([length]))  # the last chunk alone
    assert_close(paged_prefill_reference(q[40:], keys, values, *last, block_size), dense[40:])


def test_paged_prefill_of_strided_queries_int32_tables_and_a_loose_max_query_len() -> None:
    block_size, kv_heads, heads, head_dim = 16, 2, 8, 32
    contexts, num_new = [40, 17], [40, 3]
    keys, values, tables = scattered_paged_cache(contexts, kv_heads, head_dim, block_size, torch.float32)
    qkv = torch.randn(sum(num_new), (heads + 2 * kv_heads) * head_dim)
    q = qkv[:, : heads * head_dim].view(-1, heads, head_dim)  # rows strided by the whole projection
    args = (keys, values, tables.int(), starts_of(num_new), torch.tensor(contexts, dtype=torch.int32), block_size)
    out = paged_prefill(q, *args, 64, scale=0.3)  # an upper bound on the chunk lengths is enough
    assert_close(out, paged_prefill_reference(q, *args, scale=0.3))
