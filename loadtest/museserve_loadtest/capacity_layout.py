"""One replica's memory: the model's weights and KV bytes per token (from museserve's model shape),
the TP x PP layout it runs on, and how many sequences of the context mix its KV cache holds.

KV bytes per token is `MuseConfig.kv_cache_bytes_per_token`, the number the engine sizes its
cache with (`museserve.config.context_window`): K and V of every layer and KV head, summed
over the replica's ranks, so it does not depend on the TP x PP split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from museserve.model.config import MuseConfig, check_parallel

GIB = 1 << 30
LAYOUT_TENSOR_CHOICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Layout:
    """A model size on GPUs of one memory size: the smallest TP (then PP) whose weights take at
    most half the usable memory, leaving the other half at least for the KV cache."""

    model_size: str
    parameters: int
    weight_gib: float
    tensor_parallel: int
    pipeline_parallel: int

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel


def architecture(size: str, vocab_size: int) -> MuseConfig:
    return MuseConfig.named(size, vocab_size)


def suggest_layout(arch: MuseConfig, size: str, weight_bytes: float, usable_gpu_bytes: float) -> Layout:
    weights = arch.num_parameters * weight_bytes
    for tp in LAYOUT_TENSOR_CHOICES:
        if arch.num_key_value_heads % tp == 0 and weights / tp <= usable_gpu_bytes / 2:
            return Layout(size, arch.num_parameters, weights / GIB, tp, 1)
    tp = max(t for t in LAYOUT_TENSOR_CHOICES if arch.num_key_value_heads % t == 0)
    pp = math.ceil(weights / tp / (usable_gpu_bytes / 2))
    return Layout(size, arch.num_parameters, weights / GIB, tp, pp)


@dataclass(frozen=True)
class ReplicaMemory:
    gpus: int
    weight_bytes: float
    kv_bytes: float  # usable memory of the replica's GPUs less its weights
    kv_bytes_per_token: int
    mean_context_tokens: float  # over the context mix
    kv_bytes_per_sequence: float
    kv_sequences: int  # sequences of the mean context the KV cache holds at once


def mean_context(mix: Mapping[str, float]) -> float:
    """`{tokens: share}`; the shares sum to 1 (ValueError naming context_mix otherwise)."""
    try:
        pairs = [(float(k), float(v)) for k, v in mix.items()]
    except (TypeError, ValueError):
        raise ValueError(f"context_mix: expected tokens -> share, got {dict(mix)}") from None
    if not pairs or any(t <= 0 or s < 0 for t, s in pairs) or abs(sum(s for _, s in pairs) - 1) > 1e-6:
        raise ValueError(f"context_mix: token counts > 0 with shares >= 0 summing to 1, got {dict(mix)}")
    return sum(t * s for t, s in pairs)


def replica_memory(
    arch: MuseConfig,
    tensor: int,
    pipeline: int,
    gpu_memory_gib: float,
    utilisation: float,
    weight_bytes: float,
    kv_element_bytes: int,
    context_mix: Mapping[str, float],
) -> ReplicaMemory:
    """ValueError naming the figure when the layout cannot split the model, the weights leave no
    room, or the longest context of the mix does not fit one replica's KV cache."""
    try:
        check_parallel(arch, tensor, pipeline)
    except ValueError as e:
        raise ValueError(f"tensor_parallel x pipeline_parallel: {e}") from None
    gpus = tensor * pipeline
    weights = arch.num_parameters * weight_bytes
    kv = gpus * gpu_memory_gib * GIB * utilisation - weights
    if kv <= 0:
        raise ValueError(
            f"tensor_parallel x pipeline_parallel: {gpus} GPUs of {gpu_memory_gib:g} GiB at {utilisation:g} "
            f"hold no KV cache beside {weights / GIB:.1f} GiB of weights"
        )
    per_token = arch.kv_cache_bytes_per_token(kv_element_bytes)
    mean = mean_context(context_mix)
    longest = max(float(k) for k in context_mix)
    if longest * per_token > kv:
        raise ValueError(f"context_mix: {longest:,.0f} tokens need {longest * per_token / GIB:.1f} GiB of KV cache; "
                         f"one replica has {kv / GIB:.1f} GiB")  # fmt: skip
    return ReplicaMemory(gpus, weights, kv, per_token, mean, mean * per_token, math.floor(kv / (mean * per_token)))
