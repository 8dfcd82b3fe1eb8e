"""A CPU replica's kernels use the cores it may run on, whatever OMP_NUM_THREADS its process
started with (Ray starts replica processes with 1)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from museserve.config import PoolConfig
from museserve.runner.loading import local_runner


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cpu_threads", "expected"), [(0, len(os.sched_getaffinity(0))), (1, 1)])
def test_the_runner_sets_its_threads(cpu_threads: int, expected: int) -> None:
    torch.set_num_threads(3 if expected != 3 else 2)  # neither what it should end at
    pool = PoolConfig(
        name="threads", model={"device": "cpu", "cpu_threads": cpu_threads}, engine={"kv_cache_bytes": 4 << 20}
    )
    local_runner(pool, 64)
    assert torch.get_num_threads() == expected
