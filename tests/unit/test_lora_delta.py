"""The batched LoRA delta equals each row's own adapter applied alone, whatever the order of the
rows' adapters in the step and with rows of no adapter among them."""

from __future__ import annotations

import pytest
import torch

from museserve.lora.delta import LoraBatch, add_lora_


def row_by_row(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: list[int]) -> torch.Tensor:
    expected = out.clone()
    for row, slot in enumerate(slots):
        if slot >= 0:
            expected[row] += b[slot] @ (a[slot] @ x[row])
    return expected


@pytest.mark.parametrize(
    "slots",
    [
        [0, 0, 1, 1, 2],  # already grouped, from row 0: added in place
        [2, -1, 0, 2, 1, 0, -1, 1],  # interleaved: regrouped and scattered back
        [-1, -1, 3, 3, 3],
        [1],
        [1, 0, -1, 1, 0],  # two adapters: matmuls per segment, regrouped
    ],
)
def test_each_row_gets_its_own_adapters_delta(slots: list[int]) -> None:
    generator = torch.Generator().manual_seed(len(slots))
    num_slots, rank, d_in, d_out = 4, 8, 24, 40
    x = torch.randn(len(slots), d_in, generator=generator)
    a = torch.randn(num_slots, rank, d_in, generator=generator)
    b = torch.randn(num_slots, d_out, rank, generator=generator)
    out = torch.randn(len(slots), d_out, generator=generator)
    expected = row_by_row(out, x, a, b, slots)
    batch = LoraBatch.build(slots, torch.device("cpu"))
    assert batch is not None
    add_lora_(out, x, a, b, batch)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_step_without_adapters_has_no_batch() -> None:
    assert LoraBatch.build([-1, -1, -1], torch.device("cpu")) is None


def test_rows_are_grouped_by_slot_keeping_their_order() -> None:
    batch = LoraBatch.build([2, -1, 0, 2, 0], torch.device("cpu"))
    assert batch is not None
    assert batch.order is not None and batch.order.tolist() == [2, 4, 0, 3]
    assert batch.segments == ((0, 0, 2), (2, 2, 4))
    grouped = LoraBatch.build([1, 1, 3, -1], torch.device("cpu"))
    assert grouped is not None and grouped.order is None and grouped.segments == ((1, 0, 2), (3, 2, 3))


@pytest.mark.parametrize(
    "slots",
    [
        [i % 8 for i in range(32)],  # decode rows over 8 adapters: grouped, no padding
        [3, 5, 4, 3, -1, 5, 6, 4, 3],  # uneven groups over slots 3..6: grouped with padding rows
    ],
)
def test_many_adapters_with_few_rows_each_run_grouped(slots: list[int]) -> None:
    batch = LoraBatch.build(slots, torch.device("cpu"))
    assert batch is not None and batch.grouped is not None
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(len(slots), 24, generator=generator)
    a = torch.randn(8, 8, 24, generator=generator)
    b = torch.randn(8, 40, 8, generator=generator)
    out = torch.randn(len(slots), 40, generator=generator)
    expected = row_by_row(out, x, a, b, slots)
    add_lora_(out, x, a, b, batch)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_a_long_prefill_beside_decodes_is_not_padded() -> None:
    slots = [0] * 200 + [1, 2, 3]  # a 200-token chunk and three decodes
    batch = LoraBatch.build(slots, torch.device("cpu"))
    assert batch is not None and batch.grouped is None and len(batch.segments) == 4
    generator = torch.Generator().manual_seed(3)
    x, out = torch.randn(len(slots), 24, generator=generator), torch.randn(len(slots), 40, generator=generator)
    a, b = torch.randn(4, 8, 24, generator=generator), torch.randn(4, 40, 8, generator=generator)
    expected = row_by_row(out, x, a, b, slots)
    add_lora_(out, x, a, b, batch)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
