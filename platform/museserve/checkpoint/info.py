"""`CheckpointInfo`: what a checkpoint holds besides its weights, whatever its format.

A Hugging Face directory and a GGUF file both end up here: a config.json-shaped dict the model
config is built from, the tokenizer as the `tokenizers` library's JSON, the chat template, the
special tokens, every id generation stops at and the sampling defaults the checkpoint recommends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckpointInfo:
    source: Path  # the resolved file or directory
    load_format: str  # "safetensors" | "gguf"
    hf_config: Mapping[str, Any]  # config.json-shaped
    tokenizer_json: str | None  # None: a Hugging Face directory without tokenizer.json
    chat_template: str | None  # the Jinja chat template, as the checkpoint gives it
    special_tokens: Mapping[str, str]  # bos_token / eos_token / pad_token / unk_token -> text
    eos_token_ids: tuple[int, ...]  # every id generation stops at; deduplicated, sorted
    # temperature / top_p / top_k / repetition_penalty, those the checkpoint recommends
    generation_defaults: Mapping[str, float | int]
