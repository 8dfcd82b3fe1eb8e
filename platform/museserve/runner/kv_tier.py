"""The second KV tier's storage: blocks evicted from the device pool, kept in host memory or in
a file on disk, and copied back when a later prompt's prefix hits them.

Shape: `storage` is [num_slots, 2 * num_layers, block_size, kv_heads, head_dim] in the pool's
dtype; slot s holds layer l's keys at [s, 2l] and values at [s, 2l + 1], so one block's KV is
contiguous (one region of the file per block). The engine's `TierIndex` says which block hash
each slot holds; the tier itself only copies what a plan tells it to.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence

import torch
from torch import Tensor

from museserve.config.pool import KVTierConfig
from museserve.runner.kv_pool import PagedKVPool

logger = logging.getLogger(__name__)


class KVTier:
    def __init__(self, pool: PagedKVPool, num_slots: int, path: str | None = None):
        """`path`: a directory; the tier is then a file of its own there (removed at once, so it
        never outlives the process; its space is reserved up front). None: host memory, pinned
        when the pool is on a GPU."""
        if num_slots < 1:
            raise ValueError("a KV tier needs at least one slot")
        self.pool = pool
        self.num_slots = num_slots
        first = pool.keys[0]
        num_layers, bs = len(pool.keys), pool.block_size
        shape = (num_slots, 2 * num_layers, bs, *first.shape[1:])
        self.path = path
        if path is None:
            self.storage = torch.empty(shape, dtype=first.dtype, pin_memory=first.is_cuda)
        else:
            self.storage = _file_backed(path, shape, first.dtype)

    @property
    def num_bytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    def _blocks(self, layer: int) -> tuple[Tensor, Tensor]:
        """Layer `layer`'s keys and values as [num_blocks, block_size, kv_heads, head_dim] views
        of the pool (its scratch slot left out)."""
        pool, bs = self.pool, self.pool.block_size
        k, v = pool.keys[layer][:-1], pool.values[layer][:-1]
        return k.view(pool.num_blocks, bs, *k.shape[1:]), v.view(pool.num_blocks, bs, *v.shape[1:])

    def apply(self, saves: Sequence[tuple[int, int]], loads: Sequence[tuple[int, int]]) -> None:
        """All `saves` (block id -> slot), then all `loads` (slot -> block id), one batched copy
        per layer and direction. Runs on the device thread before the plan's step: saves read
        blocks the step may overwrite, loads fill blocks the step reads. Within one plan no slot
        is saved into twice or saved into after a load from it (the block manager pins them)."""
        device = self.pool.keys[0].device
        if saves:
            blocks = torch.tensor([b for b, _ in saves], dtype=torch.long, device=device)
            slots = torch.tensor([s for _, s in saves], dtype=torch.long)
            for layer in range(len(self.pool.keys)):
                for half, blocks_view in enumerate(self._blocks(layer)):
                    # [n, bs, kv_heads, d]; on a GPU `.cpu()` waits for the stream: earlier steps' writes are in
                    rows = blocks_view.index_select(0, blocks).cpu()
                    self.storage[:, 2 * layer + half].index_copy_(0, slots, rows)
        if loads:
            slots = torch.tensor([s for s, _ in loads], dtype=torch.long)
            blocks = torch.tensor([b for _, b in loads], dtype=torch.long, device=device)
            for layer in range(len(self.pool.keys)):
                for half, blocks_view in enumerate(self._blocks(layer)):
                    rows = self.storage[:, 2 * layer + half].index_select(0, slots)
                    blocks_view.index_copy_(0, blocks, rows.to(device))  # queued before the step's kernels


def _file_backed(directory: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zeroed tensor mapped onto a new file in `directory`, shared with the file (writes go to
    the page cache, and to disk when the kernel evicts them). The file is unlinked once mapped:
    replicas on one node never share one, and a crash leaves none behind."""
    numel = 1
    for n in shape:
        numel *= n
    num_bytes = numel * torch.empty((), dtype=dtype).element_size()
    fd, name = tempfile.mkstemp(prefix="museserve-kv-tier-", suffix=".bin", dir=directory)
    try:
        os.posix_fallocate(fd, 0, num_bytes)  # no space: an error now, not SIGBUS on a later write
        storage = torch.from_file(name, shared=True, size=numel, dtype=dtype)
    finally:
        os.unlink(name)
        os.close(fd)
    return storage.view(shape)


def tier_slots(pool: PagedKVPool, num_bytes: int) -> int:
    """Blocks of `pool` that `num_bytes` hold: the tier's slots (the engine's index has as many)."""
    per_block = sum(t[0].numel() * t.element_size() for t in (*pool.keys, *pool.values)) * pool.block_size
    return num_bytes // per_block


def build_kv_tier(pool: PagedKVPool, config: KVTierConfig, pool_name: str) -> KVTier | None:
    """The tier `config` asks for beside `pool`, or None when it is off (0 bytes)."""
    if config.bytes == 0:
        return None
    num_slots = tier_slots(pool, config.bytes)
    if num_slots < 1:
        raise ValueError(f"pool {pool_name}: engine.kv_tier.bytes holds no KV block of this model")
    tier = KVTier(pool, num_slots, config.path)
    logger.info(
        "pool %s: KV tier of %d blocks (%.1f MiB) in %s",
        pool_name,
        num_slots,
        tier.num_bytes / 2**20,
        config.path or "host memory",
    )
    return tier
