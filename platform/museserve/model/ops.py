"""The one dispatch for the decoder's fused ops: the model and the KV pool call these, never a
kernel. CUDA tensors run the compiled Triton kernels of `museserve_kernels`; tensors anywhere
else run the torch reference beside each kernel (so CPU outputs are the references' exactly).
`torch_reference_only()` forces the references on CUDA too, to compare or benchmark the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

from museserve_kernels import activation, cache_write, norm, paged_attention, paged_prefill, rope

_reference_only: ContextVar[bool] = ContextVar("museserve_reference_only", default=False)


@contextmanager
def torch_reference_only() -> Iterator[None]:
    """Within (this thread's context): every op runs its torch reference, also on CUDA. A CUDA
    graph keeps the path it was captured with; the reference KV write cannot be captured."""
    token = _reference_only.set(True)
    try:
        yield
    finally:
        _reference_only.reset(token)


def _fused(t: Tensor) -> bool:
    return t.is_cuda and not _reference_only.get()


def rmsnorm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x [..., hidden] -> normalised, times weight."""
    return norm.rmsnorm(x, weight, eps) if _fused(x) else norm.rmsnorm_reference(x, weight, eps)


def add_rmsnorm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(rmsnorm(x + residual), x + residual), in one pass on CUDA."""
    if _fused(x):
        return norm.add_rmsnorm(x, residual, weight, eps)
    return norm.add_rmsnorm_reference(x, residual, weight, eps)


def rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotated (q [T, heads, d], k [T, kv_heads, d]); cos/sin [T, d] in the half-split layout.
    On CUDA q and k are rotated in place and returned; elsewhere the results are new tensors:
    callers use the returned pair and never read q or k again."""
    return rope.rotary_(q, k, cos, sin) if _fused(q) else rope.rotary_reference(q, k, cos, sin)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [T, heads, d] rotated out of place (the reference; for tests and one-off uses)."""
    return rope.rotate(x, cos, sin)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, a new tensor."""
    return activation.silu_mul(gate, up) if _fused(gate) else activation.silu_mul_reference(gate, up)


def kv_write(k: Tensor, v: Tensor, key_cache: Tensor, value_cache: Tensor, slot_mapping: Tensor) -> None:
    """Rows k/v [T, kv_heads, d] into caches [slots, kv_heads, d] at slot_mapping [T]; -1 skips."""
    if _fused(k):
        cache_write.kv_write(k, v, key_cache, value_cache, slot_mapping)
    else:
        cache_write.kv_write_reference(k, v, key_cache, value_cache, slot_mapping)


def paged_decode(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    block_size: int,
    gather: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """One query per sequence, q [B, heads, d], over its context_lens [B] keys found through
    block_tables [B, max_blocks]; returns [B, heads, d]. `gather`: from `decode_gather` of the
    same tables, for callers that attend them in every layer."""
    if _fused(q):
        return paged_attention.paged_decode(q, key_cache, value_cache, block_tables, context_lens, block_size)
    return paged_attention.paged_decode_reference(
        q, key_cache, value_cache, block_tables, context_lens, block_size, gather=gather
    )


def paged_prefill_chunks(
    q: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    block_tables: Tensor,
    query_starts: Tensor,
    context_lens: Tensor,
    block_size: int,
    max_query_len: int,
) -> Tensor:
    """Packed chunks, q [T, heads, d]: chunk i's rows query_starts[i]..query_starts[i + 1] - 1 are
    the last positions of its context_lens[i], attended causally over keys read through
    block_tables [N, max_blocks] (the chunk's own k/v already written); returns [T, heads, d].
    The reference reads the lengths on the host; on a CPU the engine attends chunks in place
    (`runner.cpu_attention`) instead."""
    args = (q, key_cache, value_cache, block_tables, query_starts, context_lens, block_size)
    if _fused(q):
        return paged_prefill.paged_prefill(*args, max_query_len)
    return paged_prefill.paged_prefill_reference(*args)


def decode_gather(
    q: Tensor, block_tables: Tensor, context_lens: Tensor, block_size: int
) -> tuple[Tensor, Tensor] | None:
    """The reference's gather index for these tables (None where the kernel runs: it reads the
    tables itself); the same for every layer of a step."""
    if _fused(q):
        return None
    return paged_attention.decode_gather_index(block_tables, context_lens, block_size)
