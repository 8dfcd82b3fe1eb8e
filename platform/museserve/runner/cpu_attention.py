"""Attention over the paged pool on a CPU, reading keys and values where they lie.

A sequence's cached positions are cut into segments: a run of consecutive block ids is one
contiguous range of slots, attended as a strided view of the pool (no copy); runs shorter
than `MIN_VIEW_TOKENS` (a fragmented table) are gathered into tiles of at most
`GATHER_TILE_TOKENS`, so no copy grows with the context. Each segment is attended by
PyTorch's flash kernel, which also returns the log-sum-exp of each query's scores; the
segments' partial outputs are merged by those (the online softmax, one segment at a time).
A chunk's own new tokens are attended causally from the projections in hand, so no
T x S mask is ever built.

Shapes: q [T, heads, d]; the pool's keys/values [slots, kv_heads, d]; outputs [T, heads, d].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MIN_VIEW_TOKENS = 256  # a run at least this long is attended in place
GATHER_TILE_TOKENS = 4096  # shorter runs are gathered, at most this many slots per copy

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default

Segment = slice | Tensor  # a contiguous slot range, or the slots of a gathered tile


def kv_segments(block_ids: Sequence[int], num_positions: int, block_size: int) -> list[Segment]:
    """The segments holding positions 0..num_positions - 1 of a sequence with these blocks, in order."""
    num_blocks = -(-num_positions // block_size)
    if num_blocks == 0:
        return []
    ids = torch.tensor(block_ids[:num_blocks], dtype=torch.long)
    breaks = ((ids[1:] != ids[:-1] + 1).nonzero().flatten() + 1).tolist()
    segments: list[Segment] = []
    tile: list[Tensor] = []
    tile_len = 0

    def flush() -> None:
        nonlocal tile, tile_len
        if tile:
            segments.append(torch.cat(tile))
            tile, tile_len = [], 0

    for start, end in zip([0, *breaks], [*breaks, num_blocks], strict=True):
        first = block_ids[start] * block_size
        length = min(end * block_size, num_positions) - start * block_size
        if length >= MIN_VIEW_TOKENS:
            flush()
            segments.append(slice(first, first + length))
            continue
        tile.append(torch.arange(first, first + length))
        tile_len += length
        if tile_len >= GATHER_TILE_TOKENS:
            flush()
    flush()
    return segments


def _heads_first(x: Tensor, segment: Segment) -> Tensor:
    """[1, kv_heads, S, d] of the segment's rows of x [slots, kv_heads, d]."""
    rows = x[segment] if isinstance(segment, slice) else x.index_select(0, segment)
    return rows.transpose(0, 1)[None]


def _merge(acc: tuple[Tensor, Tensor] | None, out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Two softmax-normalised partials (out [..., d], lse [...]) over disjoint keys, as one (float32)."""
    if acc is None:
        return out.float(), lse
    acc_out, acc_lse = acc
    total = torch.logaddexp(acc_lse, lse)
    merged = acc_out * (acc_lse - total).exp_()[..., None] + out.float() * (lse - total).exp_()[..., None]
    return merged, total


def segments_attention(q: Tensor, keys: Tensor, values: Tensor, segments: list[Segment]) -> tuple[Tensor, Tensor]:
    """Every query of q [T, heads, d] over all keys of the segments (no mask): (out [T, heads, d]
    float32, lse [T, heads]). q has the pool's dtype. The `group` query heads of one kv head are
    folded into that head's query rows, so the kernel reads each key once for all of them."""
    num_tokens, heads, dim = q.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    folded = q.view(num_tokens, kv_heads, group, dim).transpose(0, 1).reshape(1, kv_heads, num_tokens * group, dim)
    acc: tuple[Tensor, Tensor] | None = None
    for segment in segments:
        out, lse = _flash(folded, _heads_first(keys, segment), _heads_first(values, segment))
        acc = _merge(acc, out, lse)
    assert acc is not None, "attention over no keys"
    out, lse = acc
    out = out.view(kv_heads, num_tokens, group, dim).transpose(0, 1).reshape(num_tokens, heads, dim)
    return out, lse.view(kv_heads, num_tokens, group).transpose(0, 1).reshape(num_tokens, heads)


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor, cached: list[Segment]) -> Tensor:
    """A chunk's T new tokens, q [T, heads, d] and their k/v [T, kv_heads, d], over the cached
    segments (every earlier position, all visible) and causally over themselves. Inputs in the
    pool's dtype; returns [T, heads, d], float32 where segments were merged."""
    out, lse = _flash(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], 0.0, True)
    own = out[0].transpose(0, 1)  # [T, heads, d]
    if not cached:
        return own
    earlier = segments_attention(q, keys, values, cached)
    merged, _ = _merge(earlier, own, lse[0].transpose(0, 1))
    return merged
