"""A GGUF file's metadata as a Hugging Face `config.json` dict, plus its stop ids and specials.

The file is read with the maintained `gguf` package; no tensor data is touched here. Keys follow
llama.cpp's names (`{arch}.block_count`, `tokenizer.ggml.eos_token_id`, ...). Only the
architectures the model code runs are accepted, and a RoPE the model code cannot express is an
error here rather than wrong logits later.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from museserve.checkpoint.paths import CheckpointError

# general.architecture -> the gguf package's architecture (its tensor-name map) and the
# transformers class a config.json of that model_type names.
SUPPORTED_ARCHITECTURES: dict[str, tuple[gguf.MODEL_ARCH, str]] = {
    "llama": (gguf.MODEL_ARCH.LLAMA, "LlamaForCausalLM"),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, "Qwen2ForCausalLM"),
    "qwen3": (gguf.MODEL_ARCH.QWEN3, "Qwen3ForCausalLM"),
}
EOS_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
}
# general.sampling.* (written by recent converters from generation_config.json) -> our names.
SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_p": "top_p",
    "general.sampling.top_k": "top_k",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
# llama.cpp stores llama3-style frequency factors as this tensor instead of parameters.
ROPE_FREQS_TENSOR = "rope_freqs.weight"


def open_gguf(source: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(source)
    except (ValueError, OSError) as error:
        raise CheckpointError(f"{source}: not a readable GGUF file ({error})") from error


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key-value field as a Python value (arrays as lists), the GGUF header fields aside."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def architecture(metadata: Mapping[str, Any], source: Path) -> str:
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{source}: general.architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return arch


def required(metadata: Mapping[str, Any], key: str, source: Path) -> Any:
    if key not in metadata:
        raise CheckpointError(f"{source}: metadata key {key} is missing")
    return metadata[key]


def torch_shape(tensor: gguf.ReaderTensor) -> tuple[int, ...]:
    """GGUF lists dimensions innermost first; torch lists them outermost first."""
    return tuple(int(dim) for dim in reversed(tensor.shape.tolist()))


def hf_config(metadata: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], source: Path) -> dict[str, Any]:
    """The config.json transformers would hold for this file; `tensors`: name -> torch shape."""
    arch = architecture(metadata, source)
    key = f"{arch}."
    hidden = int(required(metadata, key + "embedding_length", source))
    heads = int(required(metadata, key + "attention.head_count", source))
    head_dim = int(metadata.get(key + "attention.key_length") or hidden // heads)
    rotary = metadata.get(key + "rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        raise CheckpointError(
            f"{source}: {key}rope.dimension_count ({rotary}) differs from the head size ({head_dim}); "
            "partial rotary embeddings are not supported"
        )
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{source}: tensor token_embd.weight is missing")
    config: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[arch][1]],
        "model_type": arch,
        "vocab_size": tensors["token_embd.weight"][0],
        "hidden_size": hidden,
        "num_hidden_layers": int(required(metadata, key + "block_count", source)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get(key + "attention.head_count_kv") or heads),
        "intermediate_size": int(required(metadata, key + "feed_forward_length", source)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float(required(metadata, key + "attention.layer_norm_rms_epsilon", source)),
        "rope_theta": float(metadata.get(key + "rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(metadata, tensors, arch, source),
        "max_position_embeddings": int(required(metadata, key + "context_length", source)),
        # llama.cpp writes output.weight only when it is not the embedding matrix.
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
    }
    for name, metadata_key in (("bos_token_id", SPECIAL_TOKEN_KEYS["bos_token"]), ("eos_token_id", EOS_KEYS[0])):
        if metadata_key in metadata:
            config[name] = int(metadata[metadata_key])
    return config


def _rope_scaling(
    metadata: Mapping[str, Any], tensors: Mapping[str, tuple[int, ...]], arch: str, source: Path
) -> dict[str, Any] | None:
    if ROPE_FREQS_TENSOR in tensors:
        raise CheckpointError(
            f"{source}: tensor {ROPE_FREQS_TENSOR} (llama3-style RoPE scaling baked into per-frequency factors) "
            "is not supported; serve the Hugging Face checkpoint, whose config.json states rope_scaling"
        )
    type_key, factor_key = f"{arch}.rope.scaling.type", f"{arch}.rope.scaling.factor"
    rope_type = metadata.get(type_key, "none")
    factor = float(metadata.get(factor_key) or 1.0)
    if rope_type not in ("none", "linear", "yarn"):
        raise CheckpointError(f"{source}: {type_key} {rope_type!r} is not supported; known: none, linear, yarn")
    if rope_type == "none" or factor == 1.0:  # a factor of 1 scales nothing, whatever the type
        return None
    scaling: dict[str, Any] = {"rope_type": rope_type, "factor": factor}
    original = metadata.get(f"{arch}.rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def eos_token_ids(metadata: Mapping[str, Any], source: Path) -> tuple[int, ...]:
    ids = sorted({int(metadata[key]) for key in EOS_KEYS if key in metadata})
    if not ids:
        raise CheckpointError(f"{source}: no stop token: none of {', '.join(EOS_KEYS)} is set")
    return tuple(ids)


def special_tokens(metadata: Mapping[str, Any], source: Path) -> dict[str, str]:
    tokens: list[str] = metadata.get("tokenizer.ggml.tokens") or []
    named: dict[str, str] = {}
    for name, key in SPECIAL_TOKEN_KEYS.items():
        if key not in metadata:
            continue
        token_id = int(metadata[key])
        if not 0 <= token_id < len(tokens):
            raise CheckpointError(f"{source}: {key} {token_id} is not a token id (the vocabulary has {len(tokens)})")
        named[name] = tokens[token_id]
    return named


def generation_defaults(metadata: Mapping[str, Any]) -> dict[str, float | int]:
    """The file's recommended sampling parameters (general.sampling.*), those present."""
    defaults: dict[str, float | int] = {}
    for key, name in SAMPLING_KEYS.items():
        value = metadata.get(key)
        if value is None:
            continue
        # Stored as float32: print the shortest float32 spelling, so 0.9 reads 0.9, not 0.8999999761.
        defaults[name] = int(value) if name == "top_k" else float(str(np.float32(value)))
    return defaults
