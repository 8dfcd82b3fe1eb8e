"""Multi-adapter LoRA shrink and expand against their references, in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

from museserve_kernels import lora
from tests.kernels.support import assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def adapters(slots: int, rank: int, in_features: int, out_features: int, dtype: torch.dtype) -> tuple:
    """(lora_a [S, R, IN], lora_b [S, OUT, R]), scaled so t and the update are O(1)."""
    lora_a = (torch.randn(slots, rank, in_features) / in_features**0.5).to(dtype)
    lora_b = (torch.randn(slots, out_features, rank) / rank**0.5).to(dtype)
    return lora_a, lora_b


def slots_for(rows: int, slots: int, index_dtype: torch.dtype) -> torch.Tensor:
    """Random slots in -1..S-1, row 0 with adapter 0, and row 1 (when there is one) without an adapter."""
    row_slots = torch.randint(-1, slots, (rows,))
    row_slots[0] = 0
    if rows > 1:
        row_slots[1] = -1
    return row_slots.to(index_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "rows, rank, in_features, out_features, index_dtype",
    [
        (1, 16, 64, 48, torch.int64),
        (37, 12, 72, 100, torch.int32),
        (5, 64, 300, 33, torch.int64),
        (3, 80, 40, 20, torch.int32),  # past one expand block of 64 ranks
    ],
    ids=["N1-R16", "N37-R12-i32", "N5-R64", "N3-R80-i32"],
)
def test_shrink_then_expand_match_the_references(
    dtype: torch.dtype, rows: int, rank: int, in_features: int, out_features: int, index_dtype: torch.dtype
) -> None:
    slots = 3
    lora_a, lora_b = adapters(slots, rank, in_features, out_features, dtype)
    x = torch.randn(rows, in_features).to(dtype)
    row_slots = slots_for(rows, slots, index_dtype)
    t = lora.lora_shrink(x, lora_a, row_slots)
    expected_t = lora.reference_shrink(x, lora_a, row_slots)
    assert t.dtype == torch.float32 and t.shape == (rows, rank)
    assert_close(t, expected_t)  # float32 products of the same inputs: only the summation order differs
    assert torch.equal(t[row_slots < 0], torch.zeros_like(t[row_slots < 0]))

    out = torch.randn(rows, out_features).to(dtype)
    original, expected = out.clone(), out.clone()
    lora.lora_expand_(out, t, lora_b, row_slots)
    lora.reference_expand_(expected, expected_t, lora_b, row_slots)
    assert_close(out, expected)
    assert torch.equal(out[row_slots < 0], original[row_slots < 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expand_into_a_column_slice_of_a_fused_projection(dtype: torch.dtype) -> None:
    """out as the middle columns of [N, 3 * OUT] (row stride 3 * OUT): the other columns and the rows
    without an adapter are left bit for bit."""
    rows, rank, out_features, slots = 6, 8, 40, 2
    _, lora_b = adapters(slots, rank, 16, out_features, dtype)
    t = torch.randn(rows, rank)
    row_slots = torch.tensor([1, -1, 0, 1, -1, 0], dtype=torch.int32)
    fused = torch.randn(rows, 3 * out_features).to(dtype)
    original = fused.clone()
    out = fused[:, out_features : 2 * out_features]
    expected = out.clone()
    lora.lora_expand_(out, t, lora_b, row_slots)
    lora.reference_expand_(expected, t, lora_b, row_slots)
    assert_close(out, expected)
    assert torch.equal(fused[:, :out_features], original[:, :out_features])
    assert torch.equal(fused[:, 2 * out_features :], original[:, 2 * out_features :])
    assert torch.equal(fused[row_slots < 0], original[row_slots < 0])
    assert not torch.equal(fused[row_slots >= 0], original[row_slots >= 0])


def test_each_row_uses_its_own_adapter() -> None:
    """Rows of equal inputs on different slots give each slot's own product, computed one adapter at a time."""
    lora_a, lora_b = adapters(4, 1, 24, 20, torch.float32)  # rank 1
    x = torch.randn(1, 24).expand(4, 24).contiguous()
    row_slots = torch.tensor([3, 0, 2, 1])
    t = lora.lora_shrink(x, lora_a, row_slots)
    for n, s in enumerate(row_slots.tolist()):
        assert_close(t[n], lora_a[s] @ x[n])
    out = torch.zeros(4, 20)
    lora.lora_expand_(out, t, lora_b, row_slots)
    for n, s in enumerate(row_slots.tolist()):
        assert_close(out[n], lora_b[s] @ t[n])


def test_a_batch_without_adapters_is_untouched() -> None:
    lora_a, lora_b = adapters(2, 16, 32, 32, torch.bfloat16)
    x, out = torch.randn(3, 32).bfloat16(), torch.randn(3, 32).bfloat16()
    original = out.clone()
    none = torch.full((3,), -1)
    t = lora.lora_shrink(x, lora_a, none)
    assert torch.equal(t, torch.zeros(3, 16))
    lora.lora_expand_(out, torch.randn(3, 16), lora_b, none)
    assert torch.equal(out, original)
    empty = lora.lora_shrink(x[:0], lora_a, none[:0])  # no rows: nothing launched
    assert empty.shape == (0, 16)
    lora.lora_expand_(out[:0], empty, lora_b, none[:0])


def test_lora_arguments() -> None:
    x, lora_a, lora_b = torch.randn(3, 32), torch.randn(2, 8, 32), torch.randn(2, 48, 8)
    slots, t, out = torch.tensor([0, -1, 1]), torch.randn(3, 8), torch.randn(3, 48)
    with pytest.raises(ValueError, match=r"lora_a must be \[\*, \*, 32\]"):
        lora.lora_shrink(x, torch.randn(2, 8, 16), slots)
    with pytest.raises(ValueError, match="lora_a must have x's dtype"):
        lora.lora_shrink(x, lora_a.half(), slots)
    with pytest.raises(ValueError, match="rank must be at least 1, got 0"):
        lora.lora_shrink(x, torch.randn(2, 0, 32), slots)
    with pytest.raises(ValueError, match="row_slots must be one of"):
        lora.lora_shrink(x, lora_a, slots.float())
    with pytest.raises(ValueError, match=r"row_slots must be \[3\]"):
        lora.lora_shrink(x, lora_a, slots[:2])
    with pytest.raises(ValueError, match="t must be one of"):
        lora.lora_expand_(out, t.half(), lora_b, slots)
    with pytest.raises(ValueError, match=r"lora_b must be \[\*, 48, 8\]"):
        lora.lora_expand_(out, t, torch.randn(2, 48, 16), slots)
    with pytest.raises(ValueError, match="lora_b must have out's dtype"):
        lora.lora_expand_(out, t, lora_b.bfloat16(), slots)
    with pytest.raises(ValueError, match="out needs a unit stride"):
        lora.lora_expand_(torch.randn(48, 3).t(), t, lora_b, slots)
    with pytest.raises(ValueError, match="one device"):
        lora.lora_expand_(out, t, lora_b, slots.to("meta"))
