"""What a benchmark ran on, for every bench JSON: the CPU's model and the instruction sets the
CPU kernels (oneDNN, MKL, SDPA) choose by. The same engine bench gave 3.76x on an AVX-512
EPYC and 1.99x on an AVX2-only one, so a figure means little without these."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# /proc/cpuinfo flag -> the name reports use
ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
}


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, object]:
    """The CPU's model name and which of `ISA_FLAGS` it has (all False where /proc/cpuinfo is absent)."""
    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "model": model,
        "isa": {name: flag in flags for flag, name in ISA_FLAGS.items()},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
