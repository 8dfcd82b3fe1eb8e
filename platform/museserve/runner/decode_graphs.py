"""CUDA graphs of decode steps: a step in which every sequence computes one token replays a
captured graph instead of launching its few hundred small kernels one by one from Python.

A graph is captured on first use per bucket (batch, width): up to `batch` sequences, padded
with idle rows, whose contexts fit in `width` slots. Its inputs live in one static buffer that
a replay fills with one host-to-device copy. Idle rows write their k/v to the pool's scratch
slot and attend to it alone; their logits are dropped. Steps that fit no bucket (prefill
chunks, longer contexts, bigger batches) run eagerly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from museserve.engine.plan import SchedulerPlan
from museserve.model.muse import MuseForCausalLM
from museserve.runner.kv_pool import SDPA_BACKENDS, BatchLayout, DecodeBatch, PagedKVPool
from museserve.runner.paged_step import PagedStep

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MIN_WIDTH = 64
MAX_SLOTS = 1 << 17  # batch * width: beyond, a step decodes eagerly rather than gather this much padding


@dataclass(frozen=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: Tensor  # long [4 * batch + batch * blocks]: ids, positions, new slots, lengths, then block tables
    logits: Tensor  # [batch, vocab] float32, overwritten by each replay


class DecodeGraphs:
    def __init__(self, model: MuseForCausalLM, pool: PagedKVPool):
        self.model = model
        self.pool = pool
        self.device = next(model.parameters()).device
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.memory = torch.cuda.graph_pool_handle()  # shared: graphs never replay at once
        self.capture_s = 0.0  # time spent capturing, all buckets together

    def bucket(self, plan: SchedulerPlan) -> tuple[int, int] | None:
        """(batch, width) of the graph that runs this plan, or None when it must run eagerly."""
        sequences = plan.sequences
        # A one-token recompute may land on a media placeholder: graphs embed token ids only.
        # Graphs hold no LoRA delta: a step with an adapter's row runs eagerly.
        if not sequences or any(item.num_new_tokens != 1 or item.media or item.lora_slot >= 0 for item in sequences):
            return None
        batch = next((b for b in BATCH_BUCKETS if b >= len(sequences)), None)
        longest = max(item.first_position for item in sequences) + 1
        width = max(MIN_WIDTH, 1 << (longest - 1).bit_length())
        if batch is None or batch * width > MAX_SLOTS:
            return None
        return batch, width

    def replay(self, plan: SchedulerPlan, bucket: tuple[int, int]) -> Tensor:
        """Logits [num_sampling_sequences, vocab] of a plan that fits `bucket`; queued, not awaited."""
        graph = self.graphs.get(bucket)
        if graph is None:
            start = time.perf_counter()
            graph = self.graphs[bucket] = self._capture(*bucket)
            self.capture_s += time.perf_counter() - start
        graph.inputs.copy_(self._inputs(plan, *bucket))
        graph.graph.replay()
        rows = [i for i, item in enumerate(plan.sequences) if item.samples]
        return graph.logits[rows]  # a copy: the next replay overwrites graph.logits

    def _inputs(self, plan: SchedulerPlan | None, batch: int, width: int) -> Tensor:
        """The static buffer's contents, built on the CPU; rows past the plan's are idle."""
        bs = self.pool.block_size
        sequences = plan.sequences if plan is not None else ()
        num_blocks = -(-width // bs)
        table = [list(item.block_ids[:num_blocks]) + [0] * (num_blocks - len(item.block_ids)) for item in sequences]
        # An idle row's one key is the pool's scratch slot: "block" num_blocks, offset 0.
        table += [[self.pool.num_blocks] + [0] * (num_blocks - 1)] * (batch - len(sequences))
        tables = torch.tensor(table, dtype=torch.long)  # [batch, num_blocks]
        positions = torch.tensor([item.first_position for item in sequences] + [0] * (batch - len(sequences)))
        lengths = positions + 1
        new_slots = tables.gather(1, (positions // bs)[:, None]).squeeze(1) * bs + positions % bs
        ids = torch.tensor([item.token_ids[0] for item in sequences] + [0] * (batch - len(sequences)))
        return torch.cat((ids, positions, new_slots, lengths, tables.flatten()))

    def _forward(self, inputs: Tensor, batch: int, width: int) -> Tensor:
        ids, positions, new_slots, lengths = inputs[: 4 * batch].view(4, batch)
        tables = inputs[4 * batch :].view(batch, -1)
        decode = DecodeBatch(torch.arange(batch, device=self.device), tables, lengths)
        # Only the decode group is read: no sequence is chunked, so per-sequence fields stay empty.
        layout = BatchLayout(new_slots, (), (), (), self.pool.block_size, decode=(decode,))
        with sdpa_kernel(SDPA_BACKENDS):
            hidden = self.model(self.model.embed(ids), positions, PagedStep(self.pool, layout))
        return self.model.compute_logits(hidden)

    def _capture(self, batch: int, width: int) -> _Graph:
        inputs = self._inputs(None, batch, width).to(self.device)  # all rows idle: only scratch is written
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the capture: lazy initialisation, workspaces
            self._forward(inputs, batch, width)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (an event loop, another engine) may touch the GPU meanwhile.
        with torch.cuda.graph(graph, pool=self.memory, capture_error_mode="thread_local"):
            logits = self._forward(inputs, batch, width)
        return _Graph(graph, inputs, logits)
