"""Runs tests/kernels/interpreted in a child pytest whose environment has TRITON_INTERPRET=1
before anything imports triton (see conftest.py for why it cannot run in this process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from tests.kernels.conftest import INTERPRETING

ROOT = Path(__file__).resolve().parents[2]


# Older interpreters cannot loop to a bound loaded at run time (a context length, a head count).
OLD_INTERPRETER = tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9)


@pytest.mark.skipif(INTERPRETING, reason="this process interprets: it collects tests/kernels/interpreted itself")
@pytest.mark.skipif(OLD_INTERPRETER, reason=f"triton {triton.__version__}: the kernels need the interpreter of 3.9+")
def test_every_kernel_matches_its_reference_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "tests/kernels/interpreted"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    report = (done.stdout + done.stderr)[-6000:]
    print(report)
    assert done.returncode == 0, f"interpreted kernel tests failed:\n{report}"
    assert " passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1], report
