"""Kernel tests: interpreted (tests/kernels/interpreted), compiled for sm_90a, and on a GPU.

Triton decides at `import triton` whether every `@triton.jit` function (ours and its own
tl.sum, tl.max, ...) is interpreted, so interpreter mode is a property of a whole process and
cannot be switched on for one folder of a pytest run that has already imported triton. The
interpreted tests therefore run in a child pytest with TRITON_INTERPRET=1 in its environment
from the start (`test_interpreter.py`); this process ignores that folder unless it was itself
started with TRITON_INTERPRET=1 (then it may run them directly). Nothing leaks into other
folders: this process never sets the variable.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
collect_ignore = [] if INTERPRETING else ["interpreted"]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)
