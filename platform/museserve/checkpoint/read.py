"""`read_checkpoint`: a checkpoint's `CheckpointInfo`, from metadata only.

No weight is read or dequantized here, and nothing here imports torch, so a process that only
tokenizes (the preprocess tier) can read a checkpoint cheaply.
"""

from __future__ import annotations

from museserve.checkpoint.gguf_info import read_gguf_info
from museserve.checkpoint.hf_directory import read_hf_directory
from museserve.checkpoint.info import CheckpointInfo
from museserve.checkpoint.paths import CheckpointError, resolve_checkpoint_path

LOAD_FORMATS = ("safetensors", "gguf")


def read_checkpoint(path: str, load_format: str) -> CheckpointInfo:
    """`path`: a Hugging Face directory ("safetensors"), a GGUF file ("gguf"), or `package:NAME/FILE`."""
    if load_format not in LOAD_FORMATS:
        raise CheckpointError(f"load_format: {load_format!r} has no checkpoint to read; expected one of {LOAD_FORMATS}")
    source = resolve_checkpoint_path(path)
    if load_format == "gguf":
        return read_gguf_info(source)
    return read_hf_directory(source)
