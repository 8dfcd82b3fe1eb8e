"""Kernels against their references in Triton's interpreter, on CPU tensors. Run by
`tests/kernels/test_interpreter.py` in a child process started with TRITON_INTERPRET=1, or
directly: `TRITON_INTERPRET=1 python -m pytest tests/kernels/interpreted`."""

from __future__ import annotations

import os

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("tests/kernels/interpreted needs TRITON_INTERPRET=1 set before triton is imported")
