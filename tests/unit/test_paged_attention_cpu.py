"""Attention read in place from the paged pool on a CPU (runner/cpu_attention.py, PagedStep)
against dense causal attention over each whole sequence."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from museserve.model import ops
from museserve.model.config import MuseConfig
from museserve.runner import cpu_attention, paged_step
from museserve.runner.kv_pool import BatchLayout, PagedKVPool
from museserve.runner.paged_step import PagedStep

BLOCK = 16
CONFIG = MuseConfig.named("tiny", vocab_size=64)


def test_a_contiguous_table_is_one_view() -> None:
    segments = cpu_attention.kv_segments(list(range(10, 30)), 300, BLOCK)
    assert segments == [slice(160, 460)]


def test_runs_are_views_and_fragments_are_gathered_in_bounded_tiles() -> None:
    table = list(range(100, 140)) + list(range(1000, 0, -1))  # a 640-slot run, then 1000 single blocks
    num_positions = len(table) * BLOCK - 5
    segments = cpu_attention.kv_segments(table, num_positions, BLOCK)
    assert segments[0] == slice(1600, 1600 + 640)
    tiles = segments[1:]
    assert all(isinstance(t, torch.Tensor) for t in tiles)
    assert max(len(t) for t in tiles) <= cpu_attention.GATHER_TILE_TOKENS + cpu_attention.MIN_VIEW_TOKENS
    flat = torch.cat(tiles).tolist()
    expected = [b * BLOCK + o for b in range(1000, 0, -1) for o in range(BLOCK)][: num_positions - 640]
    assert flat == expected


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of a whole sequence, float32: [S, heads, d]."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.float().transpose(0, 1)[None], v.float().transpose(0, 1)[None],
        is_causal=True, enable_gqa=True,
    )  # fmt: skip
    return out[0].transpose(0, 1)


@pytest.mark.parametrize(("kv_dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("gather_positions", [0, 1 << 30], ids=["decode-in-place", "decode-gathered"])
def test_chunks_and_decodes_over_scattered_blocks_equal_dense_attention(
    kv_dtype: torch.dtype, tolerance: float, gather_positions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paged_step, "CPU_DECODE_GATHER_POSITIONS", gather_positions)
    rng = random.Random(0)
    torch.manual_seed(0)
    heads, kv_heads, dim = CONFIG.num_attention_heads, CONFIG.num_key_value_heads, CONFIG.head_dim
    pool = PagedKVPool(CONFIG, 320, BLOCK, dtype=kv_dtype, device=torch.device("cpu"))
    lengths = [600, 420, 200]
    shuffled = list(range(88))
    rng.shuffle(shuffled)
    tables = [shuffled, list(range(100, 157)), list(range(319, 300, -1))]  # scattered, contiguous, reversed
    qs = [torch.randn(n, heads, dim) for n in lengths]
    ks = [torch.randn(n, kv_heads, dim).to(kv_dtype) for n in lengths]
    vs = [torch.randn(n, kv_heads, dim).to(kv_dtype) for n in lengths]
    expected = [dense(q, k, v) for q, k, v in zip(qs, ks, vs, strict=True)]
    done = [0] * len(lengths)
    while any(d < n for d, n in zip(done, lengths, strict=True)):
        active = [i for i, n in enumerate(lengths) if done[i] < n]
        counts = [1 if done[i] >= 150 else min(64, lengths[i] - done[i]) for i in active]  # chunks, then decodes
        layout = BatchLayout.build([tables[i] for i in active], [done[i] for i in active], counts, BLOCK, 8)
        pieces = [slice(done[i], done[i] + n) for i, n in zip(active, counts, strict=True)]
        q = torch.cat([qs[i][p] for i, p in zip(active, pieces, strict=True)])
        k = torch.cat([ks[i][p] for i, p in zip(active, pieces, strict=True)])
        v = torch.cat([vs[i][p] for i, p in zip(active, pieces, strict=True)])
        out = PagedStep(pool, layout).attend(0, q, k, v)
        start = 0
        for i, p in zip(active, pieces, strict=True):
            rows = out[start : start + p.stop - p.start]
            torch.testing.assert_close(rows, expected[i][p], atol=tolerance, rtol=tolerance)
            start += p.stop - p.start
            done[i] = p.stop


def test_the_packed_chunks_a_gpu_attends_equal_the_in_place_path() -> None:
    """`BatchLayout.prefill` packs the chunks for the paged prefill kernel; its reference (what
    the kernel is tested against) gives the rows the CPU path gives."""
    torch.manual_seed(1)
    pool = PagedKVPool(CONFIG, 100, BLOCK, dtype=torch.float32, device=torch.device("cpu"))
    tables = [list(range(0, 20)), list(range(50, 30, -1)), list(range(60, 70))]
    layout = BatchLayout.build(tables, [100, 0, 37], [40, 70, 1], BLOCK, pack_prefill=True)
    q, k, v = torch.randn(111, 4, 16), torch.randn(111, 2, 16), torch.randn(111, 2, 16)
    in_place = PagedStep(pool, layout).attend(0, q, k, v)  # also writes the step's k/v
    packed = layout.prefill
    assert packed is not None and packed.all_rows and packed.max_query_len == 70
    result = ops.paged_prefill_chunks(
        q, pool.keys[0], pool.values[0], packed.block_tables, packed.query_starts, packed.context_lens, BLOCK, 70
    )
    torch.testing.assert_close(result, in_place, atol=1e-5, rtol=1e-5)
