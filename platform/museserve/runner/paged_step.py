"""The attention backend of one step: the KV pool bound to the step's batch layout."""

from __future__ import annotations

from torch import Tensor

from museserve.model import ops
from museserve.runner import cpu_attention
from museserve.runner.cpu_attention import Segment
from museserve.runner.kv_pool import BatchLayout, DecodeBatch, PagedKVPool

# A CPU decode group whose padded context (rows x longest row) is at most this many positions is
# gathered and attended in one batched call: a copy bounded by this size, cheaper than a call per
# row for short rows (at 4,096, bench_engine's decodes of 48-768 tokens ran 10% slower). Longer
# groups read every row in place.
CPU_DECODE_GATHER_POSITIONS = 8192


class PagedStep:
    """Every layer writes its new k/v to the layout's slots (in the pool's dtype), then attends
    each sequence over its own positions, read where they lie in the pool: on a CPU through
    `cpu_attention` (views of contiguous runs, partials merged by log-sum-exp); on a GPU with
    the paged prefill and decode kernels (`ops`), which walk the block tables themselves."""

    def __init__(self, pool: PagedKVPool, layout: BatchLayout):
        self.pool = pool
        self.layout = layout
        # Built by the first layer, read by all: per sequence its segments (CPU); per decode
        # group the reference's gather index (None where the kernel runs).
        self._segments: dict[int, list[Segment]] = {}
        self._gathers: dict[int, tuple[Tensor, Tensor] | None] = {}

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q [T, heads, d], k/v [T, kv_heads, d] of this step's tokens -> [T, heads, d] in q's dtype."""
        keys, values = self.pool.keys[layer_idx], self.pool.values[layer_idx]
        k, v = k.to(keys.dtype), v.to(keys.dtype)  # rounded once: what later steps will read
        ops.kv_write(k, v, keys, values, self.layout.slot_mapping)
        out = q.new_empty(q.shape)
        q = q.to(keys.dtype)
        if q.device.type == "cpu":
            self._chunks_on_cpu(out, q, k, v, keys, values)
        else:
            self._chunks_packed(out, q, keys, values)
        for index, group in enumerate(self.layout.decode):
            if q.device.type == "cpu" and not self._gathered_on_cpu(group):
                self._decode_in_place(out, q, keys, values, group)
            else:
                self._decode_batched(out, q, keys, values, index, group)
        return out

    def _chunks_on_cpu(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor) -> None:
        starts, lengths = self.layout.query_starts, self.layout.context_lens
        for i in self.layout.chunked:
            rows = slice(starts[i], starts[i + 1])
            cached = self._segments_of(i, lengths[i] - (starts[i + 1] - starts[i]))
            out[rows] = cpu_attention.chunk_attention(q[rows], k[rows], v[rows], keys, values, cached)

    def _chunks_packed(self, out: Tensor, q: Tensor, keys: Tensor, values: Tensor) -> None:
        if not self.layout.chunked:
            return
        packed = self.layout.prefill
        assert packed is not None, "a device step's layout packs its chunks (BatchLayout.build(pack_prefill=True))"
        chunk_q = q if packed.all_rows else q.index_select(0, packed.rows)
        result = ops.paged_prefill_chunks(
            chunk_q, keys, values, packed.block_tables, packed.query_starts, packed.context_lens,
            self.pool.block_size, packed.max_query_len,
        )  # fmt: skip
        if packed.all_rows:
            out.copy_(result)
        else:
            out[packed.rows] = result.to(out.dtype)

    def _gathered_on_cpu(self, group: DecodeBatch) -> bool:
        return group.block_tables.numel() * self.pool.block_size <= CPU_DECODE_GATHER_POSITIONS

    def _decode_in_place(self, out: Tensor, q: Tensor, keys: Tensor, values: Tensor, group: DecodeBatch) -> None:
        starts, lengths = self.layout.query_starts, self.layout.context_lens
        for i in group.sequences:
            row = slice(starts[i], starts[i] + 1)
            result, _ = cpu_attention.segments_attention(q[row], keys, values, self._segments_of(i, lengths[i]))
            out[row] = result

    def _decode_batched(
        self, out: Tensor, q: Tensor, keys: Tensor, values: Tensor, index: int, group: DecodeBatch
    ) -> None:
        group_q = q.index_select(0, group.rows)
        bs = self.pool.block_size
        if index not in self._gathers:
            self._gathers[index] = ops.decode_gather(group_q, group.block_tables, group.lengths, bs)
        gather = self._gathers[index]
        result = ops.paged_decode(group_q, keys, values, group.block_tables, group.lengths, bs, gather)
        out[group.rows] = result.to(out.dtype)

    def _segments_of(self, i: int, num_positions: int) -> list[Segment]:
        if i not in self._segments:
            table = self.layout.block_tables[i]
            self._segments[i] = cpu_attention.kv_segments(table, num_positions, self.pool.block_size)
        return self._segments[i]
