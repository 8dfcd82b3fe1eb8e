"""Compiles DeepSpeed's shared-memory all-reduce op into the cache TP workers load it from.

`python -m museserve.parallel.prebuild` (run once by `make install`): g++ takes ~35-50 s on
two cores; afterwards loading the cached op takes about a second. Workers find the cache
through `tp.extensions_dir()` (TORCH_EXTENSIONS_DIR, else `<venv>/torch-extensions`).
"""

from __future__ import annotations

import os
import sys
import time

from museserve.parallel.tp import extensions_dir


def main() -> int:
    target = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(target)
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print("DeepSpeed's shared-memory all-reduce does not apply here; TP all-reduces go through gloo/NCCL")
        return 0
    started = time.monotonic()
    builder.load(verbose=False)
    print(f"DeepSpeed {builder.NAME} ready in {target} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
