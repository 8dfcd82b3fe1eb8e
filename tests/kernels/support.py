"""Shared by the kernel tests and the kernel benchmark: how close a kernel must come to its
reference, and teacher-forced serving steps for comparing two model runners."""

from __future__ import annotations

import torch
from torch import Tensor

from museserve.engine.plan import ScheduledSequence, SchedulerPlan

# The interpreter rounds float32 -> bf16 by truncation where a GPU rounds to nearest, so a bf16
# result may sit up to two bf16 ulps (2^-7 relative each) from the reference's.
INTERPRETED = {torch.float32: 1e-5, torch.bfloat16: 2**-6, torch.float16: 2e-3}
# On a GPU: FMA contraction in float32; bf16 probabilities in the P.V product of attention.
COMPILED = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def assert_close(
    actual: Tensor, expected: Tensor, *, interpreted: bool = True, rounded_via: torch.dtype | None = None
) -> None:
    """`rounded_via`: the narrowest dtype the computation rounds through, when not expected's."""
    tol = (INTERPRETED if interpreted else COMPILED)[rounded_via or expected.dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol)


def scattered_paged_cache(
    lengths: list[int], kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype, width: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(key_cache, value_cache, block_tables [N, width]) of random values: each sequence holds
    distinct shuffled blocks, and its table is padded past them with ids far past the cache (a
    kernel must never read them). At least 64 blocks; `width` defaults to the longest + 1."""
    own = [-(-n // block_size) for n in lengths]
    num_blocks = max(64, sum(own))
    key_cache, value_cache = torch.randn(2, num_blocks * block_size, kv_heads, head_dim).to(dtype)
    tables = torch.full((len(lengths), width or max(own, default=0) + 1), 10_000_000)
    order, used = torch.randperm(num_blocks), 0
    for row, k in enumerate(own):
        tables[row, :k] = order[used : used + k]
        used += k
    return key_cache, value_cache, tables


def readable(tables: Tensor, key_cache: Tensor, block_size: int) -> Tensor:
    """The tables with their padding ids replaced by block 0, for references that gather the whole width."""
    return tables.masked_fill(tables >= key_cache.shape[0] // block_size, 0)


def teacher_forced_plans(
    prompt_lens: list[int], decode_steps: int, block_size: int, vocab: int, seed: int = 0
) -> tuple[list[SchedulerPlan], int]:
    """(plans, num_blocks): plan 0 prefills every prompt, plan t > 0 decodes token t of each."""
    rng = torch.Generator().manual_seed(seed)
    sequences, first_block = [], 0
    for n in prompt_lens:
        total = n + decode_steps
        blocks = tuple(range(first_block, first_block + -(-total // block_size)))
        first_block += len(blocks)
        sequences.append((torch.randint(32, vocab, (total,), generator=rng).tolist(), blocks))
    plans = [
        SchedulerPlan(
            tuple(ScheduledSequence(f"s{i}", 0, tuple(t[:n]), b, True) for i, ((t, b), n) in
                  enumerate(zip(sequences, prompt_lens, strict=True))),
            (),
        )
    ]  # fmt: skip
    for step in range(decode_steps):
        items = (
            ScheduledSequence(f"s{i}", n + step, (t[n + step],), b, True)
            for i, ((t, b), n) in enumerate(zip(sequences, prompt_lens, strict=True))
        )
        plans.append(SchedulerPlan(tuple(items), ()))
    return plans, first_block
