"""Wrappers refuse bad arguments with a ValueError that names the argument, before any launch;
the dispatch runs the references on the CPU."""

from __future__ import annotations

import pytest
import torch

from museserve.model import ops
from museserve_kernels import activation, cache_write, norm, paged_attention, paged_prefill, rope, split_k
from tests.kernels.conftest import INTERPRETING


def test_norm_arguments() -> None:
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match=r"weight must be \[64\]"):
        norm.rmsnorm(x, torch.ones(32), 1e-5)
    with pytest.raises(ValueError, match="residual must have x's dtype"):
        norm.add_rmsnorm(x, x.bfloat16(), torch.ones(64), 1e-5)
    with pytest.raises(ValueError, match="x must be one of"):
        norm.rmsnorm(x.long(), torch.ones(64), 1e-5)
    with pytest.raises(ValueError, match="unit stride"):
        norm.rmsnorm(torch.randn(64, 4).t(), torch.ones(64), 1e-5)
    with pytest.raises(ValueError, match="one device"):
        norm.rmsnorm(x, torch.ones(64, device="meta"), 1e-5)


def test_rotary_arguments() -> None:
    q, k, cs = torch.randn(3, 4, 16), torch.randn(3, 2, 16), torch.randn(3, 16)
    with pytest.raises(ValueError, match=r"k must be \[3, \*, 16\]"):
        rope.rotary_(q, torch.randn(2, 2, 16), cs, cs)
    with pytest.raises(ValueError, match=r"cos must be \[3, 16\]"):
        rope.rotary_(q, k, torch.randn(3, 8), cs)
    with pytest.raises(ValueError, match="head_dim must be even"):
        rope.rotary_(torch.randn(3, 4, 15), torch.randn(3, 2, 15), torch.randn(3, 15), torch.randn(3, 15))
    with pytest.raises(ValueError, match="sin must have q's dtype"):
        rope.rotary_(q, k, cs, cs.double())


def test_activation_and_cache_write_arguments() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 2 \* n\]"):
        activation.silu_and_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="up must be"):
        activation.silu_mul(torch.randn(2, 8), torch.randn(2, 9))
    cache, k = torch.zeros(16, 2, 8), torch.randn(3, 2, 8)
    with pytest.raises(ValueError, match="slot_mapping must be one of"):
        cache_write.kv_write(k, k, cache, cache, torch.zeros(3))
    with pytest.raises(ValueError, match=r"v must be \[3, 2, 8\]"):
        cache_write.kv_write(k, torch.randn(3, 1, 8), cache, cache, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must have the cache's dtype"):
        cache_write.kv_write(k.half(), k.half(), cache, cache, torch.zeros(3, dtype=torch.long))


def test_paged_decode_arguments() -> None:
    q, cache = torch.randn(2, 6, 16), torch.randn(64, 4, 16)
    tables, lens = torch.zeros(2, 4, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"q_heads \(6\) must be a multiple of kv_heads \(4\)"):
        paged_attention.paged_decode(q, cache, cache, tables, lens, 16)
    q = torch.randn(2, 8, 16)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        paged_attention.paged_decode(q, cache, cache, tables, lens, 12)
    with pytest.raises(ValueError, match=r"context_lens must be \[2\]"):
        paged_attention.paged_decode(q, cache, cache, tables, lens[:1], 16)
    with pytest.raises(ValueError, match="block_tables must be one of"):
        paged_attention.paged_decode(q, cache, cache, tables.float(), lens, 16)


def test_paged_decode_splits_from_static_shapes_only() -> None:
    splits = split_k.decode_splits
    assert splits(1, 8, 1023, 132) == 1  # tables under 2 * SPLIT_MIN_KEYS: the single kernel
    assert splits(264, 1, 262_144, 132) == 1  # two programs per SM already
    assert splits(1, 8, 262_144, 132) == 33  # 8 programs -> 264
    assert splits(1, 1, 262_144, 132) == split_k.MAX_SPLITS
    assert splits(4, 8, 4096, 132) == 4096 // split_k.SPLIT_MIN_KEYS
    assert splits(0, 8, 262_144, 132) >= 1


def test_paged_prefill_arguments() -> None:
    q, cache = torch.randn(5, 8, 16), torch.randn(64, 4, 16)
    tables, starts, lens = torch.zeros(2, 4, dtype=torch.int32), torch.tensor([0, 3, 5]), torch.tensor([3, 9])
    prefill = paged_prefill.paged_prefill
    with pytest.raises(ValueError, match=r"q_heads \(6\) must be a multiple of kv_heads \(4\)"):
        prefill(torch.randn(5, 6, 16), cache, cache, tables, starts, lens, 16, 3)
    with pytest.raises(ValueError, match="value_cache must have q's dtype"):
        prefill(q, cache, cache.half(), tables, starts, lens, 16, 3)
    with pytest.raises(ValueError, match=r"key_cache must be \[\*, \*, 16\]"):
        prefill(q, torch.randn(64, 4, 8), cache, tables, starts, lens, 16, 3)
    with pytest.raises(ValueError, match=r"query_starts must be \[3\]"):
        prefill(q, cache, cache, tables, starts[:2], lens, 16, 3)
    with pytest.raises(ValueError, match=r"context_lens must be \[2\]"):
        prefill(q, cache, cache, tables, starts, lens[:1], 16, 3)
    with pytest.raises(ValueError, match="query_starts must be one of"):
        prefill(q, cache, cache, tables, starts.float(), lens, 16, 3)
    with pytest.raises(ValueError, match="block_tables must be one of"):
        prefill(q, cache, cache, tables.float(), starts, lens, 16, 3)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        prefill(q, cache, cache, tables, starts, lens, 12, 3)
    for bad in (0, -1, 3.0, torch.tensor(3)):
        with pytest.raises(ValueError, match="max_query_len must be a host int"):
            prefill(q, cache, cache, tables, starts, lens, 16, bad)
    with pytest.raises(ValueError, match="context_lens needs a unit stride"):
        prefill(q, cache, cache, tables, starts, torch.tensor([3, 0, 9, 0])[::2], 16, 3)
    with pytest.raises(ValueError, match="one device"):
        prefill(q, cache, cache, tables, starts.to("meta"), lens, 16, 3)
    empty = prefill(q[:0], cache, cache, tables[:0], starts[:1], lens[:0], 16, 0)  # no tokens: nothing launched
    assert empty.shape == (0, 8, 16)


@pytest.mark.skipif(INTERPRETING, reason="CPU tensors are valid kernel inputs under the interpreter")
def test_cpu_tensors_without_the_interpreter_are_refused() -> None:
    with pytest.raises(ValueError, match="runs on CUDA tensors, got cpu.*TRITON_INTERPRET=1"):
        norm.rmsnorm(torch.randn(2, 8), torch.ones(8), 1e-5)


def test_the_dispatch_runs_the_references_on_the_cpu() -> None:
    x, r, w = torch.randn(3, 32), torch.randn(3, 32), torch.randn(32)
    out, summed = ops.add_rmsnorm(x, r, w, 1e-6)
    ref_out, ref_summed = norm.add_rmsnorm_reference(x, r, w, 1e-6)
    assert torch.equal(out, ref_out) and torch.equal(summed, ref_summed)
    q, k, cs = torch.randn(3, 4, 16), torch.randn(3, 2, 16), torch.randn(3, 16)
    rotated_q, _ = ops.rotary(q, k, cs, cs)
    assert torch.equal(rotated_q, rope.rotary_reference(q, k, cs, cs)[0]) and not torch.equal(rotated_q, q)
    gate, up = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.equal(ops.silu_mul(gate, up), activation.silu_mul_reference(gate, up))
