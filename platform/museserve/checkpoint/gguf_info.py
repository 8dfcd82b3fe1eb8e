"""A GGUF file's `CheckpointInfo`: config, tokenizer, chat template and stop ids from its metadata."""

from __future__ import annotations

from pathlib import Path

from museserve.checkpoint.gguf_metadata import (
    eos_token_ids,
    generation_defaults,
    hf_config,
    open_gguf,
    read_metadata,
    special_tokens,
    torch_shape,
)
from museserve.checkpoint.gguf_tokenizer import build_tokenizer
from museserve.checkpoint.info import CheckpointInfo
from museserve.checkpoint.paths import CheckpointError

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


def read_gguf_info(source: Path) -> CheckpointInfo:
    if not source.is_file():
        raise CheckpointError(f"{source}: load_format gguf needs a .gguf file, not a directory")
    reader = open_gguf(source)
    metadata = read_metadata(reader)
    tensors = {tensor.name: torch_shape(tensor) for tensor in reader.tensors}
    config = hf_config(metadata, tensors, source)
    tokenizer = build_tokenizer(metadata, source)
    return CheckpointInfo(
        source=source,
        load_format="gguf",
        hf_config=config,
        tokenizer_json=tokenizer.to_str(),
        chat_template=metadata.get(CHAT_TEMPLATE_KEY),
        special_tokens=special_tokens(metadata, source),
        eos_token_ids=eos_token_ids(metadata, source),
        generation_defaults=generation_defaults(metadata),
    )
