"""A GGUF file's tensors under Hugging Face parameter names, dequantized to float32 on demand.

`gguf_tensors` yields `(hf_name, torch_shape, read)`; nothing is dequantized until `read()` is
called, so a caller that keeps only some tensors (a pipeline stage) pays only for those.

Names come from the gguf package's own map (`gguf.get_tensor_name_map`), asked in the direction
it is built for: each Hugging Face name the model family can have -> the GGUF name it is stored
under. A GGUF tensor that no Hugging Face name maps to is an error naming it.

llama.cpp's converter permutes the rows of q_proj and k_proj for the llama architecture only (its
RoPE kernel pairs adjacent dimensions, Hugging Face's pairs the two halves of each head); `read`
undoes that, so values equal those of the original Hugging Face checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import gguf
import numpy as np

from museserve.checkpoint.gguf_metadata import (
    SUPPORTED_ARCHITECTURES,
    architecture,
    open_gguf,
    read_metadata,
    required,
    torch_shape,
)
from museserve.checkpoint.paths import CheckpointError

_TOP_LEVEL_MODULES = ("model.embed_tokens", "model.norm", "lm_head")
# Per-layer Hugging Face modules of the llama / qwen2 / qwen3 families; a name the gguf map does
# not know for an architecture (q_norm for llama) is simply never produced.
_LAYER_MODULES = (
    "input_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "self_attn.q_norm",
    "self_attn.k_norm",
    "post_attention_layernorm",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
_SUFFIXES = (".weight", ".bias")


def gguf_tensors(path: Path) -> Iterator[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """`(Hugging Face name, torch shape, read)` for every tensor in the GGUF file at `path`;
    `read()` returns a float32 C-contiguous array of that shape, owned by the caller."""
    reader = open_gguf(path)
    metadata = read_metadata(reader)
    arch = architecture(metadata, path)
    layers = int(required(metadata, f"{arch}.block_count", path))
    heads = int(required(metadata, f"{arch}.attention.head_count", path))
    kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv") or heads)
    hf_names = _hf_names_by_gguf_name(SUPPORTED_ARCHITECTURES[arch][0], layers)
    # Only llama's converter permutes q/k (`LlamaModel.permute` in convert_hf_to_gguf.py).
    permuted_heads = {"self_attn.q_proj": heads, "self_attn.k_proj": kv_heads} if arch == "llama" else {}
    for tensor in reader.tensors:
        if tensor.name not in hf_names:
            raise CheckpointError(f"{path}: tensor {tensor.name} has no Hugging Face name for architecture {arch}")
        hf_name, module = hf_names[tensor.name]
        yield hf_name, torch_shape(tensor), _reader(tensor, permuted_heads.get(module))


def _hf_names_by_gguf_name(arch: gguf.MODEL_ARCH, layers: int) -> dict[str, tuple[str, str]]:
    """GGUF name -> (Hugging Face name, its module within a layer or at the top level)."""
    name_map = gguf.get_tensor_name_map(arch, layers)
    modules = [(m, m) for m in _TOP_LEVEL_MODULES]
    modules += [(f"model.layers.{i}.{m}", m) for i in range(layers) for m in _LAYER_MODULES]
    names: dict[str, tuple[str, str]] = {}
    for prefix, module in modules:
        for suffix in _SUFFIXES:
            gguf_name = name_map.get_name(prefix + suffix, try_suffixes=_SUFFIXES)
            if gguf_name is not None:
                names[gguf_name] = (prefix + suffix, module)
    return names


def _reader(tensor: gguf.ReaderTensor, permuted_heads: int | None) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(torch_shape(tensor))
        if permuted_heads is not None:
            values = _unpermute_rows(values, permuted_heads)
        # F32 tensors come back as a read-only view of the memory-mapped file: copy those.
        if np.may_share_memory(values, tensor.data) or not values.flags.c_contiguous or values.dtype != np.float32:
            values = np.array(values, dtype=np.float32, order="C")
        return values

    return read


def _unpermute_rows(values: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `reshape(heads, 2, half, ...).swapaxes(1, 2)` on q/k rows (and biases)."""
    rows = values.shape[0]
    half = rows // heads // 2
    return values.reshape(heads, half, 2, *values.shape[1:]).swapaxes(1, 2).reshape(values.shape)
