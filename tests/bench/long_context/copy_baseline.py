"""The attention path long prompts replaced, kept as the bench's in-process baseline: every
prefill chunk after the first copies its sequence's whole context out of the pool
(`index_select`) in every layer and attends it through a T x S boolean mask."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from torch import Tensor

from museserve.model.layers import causal_attention
from museserve.runner import model_runner
from museserve.runner.paged_step import PagedStep


class CopyingStep(PagedStep):
    def _chunks_on_cpu(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, keys: Tensor, values: Tensor) -> None:
        layout = self.layout
        starts = layout.query_starts
        for i in layout.chunked:
            rows = slice(starts[i], starts[i + 1])
            if layout.context_lens[i] == starts[i + 1] - starts[i]:
                out[rows] = causal_attention(q[rows], k[rows], v[rows])
                continue
            slots = layout.context_slots(i)
            out[rows] = causal_attention(q[rows], keys.index_select(0, slots), values.index_select(0, slots))


@contextmanager
def copying_attention() -> Iterator[None]:
    """Within: every step a model runner runs attends its prefill chunks the copying way."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_runner, "PagedStep", CopyingStep)
        yield
