"""What a checkpoint holds besides its weights: architecture, tokenizer, chat template, stop ids.

`read_checkpoint(path, load_format)` reads a Hugging Face directory or a GGUF file into a
`CheckpointInfo`; `museserve.checkpoint.gguf.gguf_tensors` yields a GGUF file's weights under
Hugging Face names. Nothing in this package imports torch.
"""

from museserve.checkpoint.info import CheckpointInfo
from museserve.checkpoint.paths import CheckpointError, resolve_checkpoint_path
from museserve.checkpoint.read import LOAD_FORMATS, read_checkpoint

__all__ = ["LOAD_FORMATS", "CheckpointError", "CheckpointInfo", "read_checkpoint", "resolve_checkpoint_path"]
