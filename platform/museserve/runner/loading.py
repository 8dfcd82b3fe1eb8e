"""Builds a pool's model and the runner that executes it in this process, on the pool's
device, its KV pool sized from the pool's memory budget: exactly the blocks its context
window (`config.context_window`) counts, in `kv_cache_dtype`."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch

from museserve.checkpoint import read_checkpoint
from museserve.config import MediaLimits, PoolConfig
from museserve.config.context_window import ContextWindow, check_min_context, context_window
from museserve.config.pool import ModelConfig
from museserve.config.speculative import DraftModelConfig
from museserve.lora.weights import LoraWeights
from museserve.model.config import MuseConfig
from museserve.model.loader import build_model, check_media_dims, resolve_device
from museserve.model.muse import MuseForCausalLM
from museserve.runner.kv_pool import PagedKVPool, kv_bytes_per_block
from museserve.runner.kv_tier import build_kv_tier
from museserve.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def local_runner(pool: PoolConfig, vocab_size: int, media: MediaLimits | None = None) -> ModelRunner:
    """A runner in this process on the pool's device, its KV pool sized from the pool's memory
    budget. ValueError, before any weight loads, when the cache cannot hold
    `engine.min_context_per_request` tokens."""
    arch = pool_architecture(pool, vocab_size, media)
    window = start_window(pool, arch)
    model = build_pool_model(pool, arch)
    dtype = getattr(torch, pool.kv_cache_dtype)
    device = next(model.parameters()).device
    if device.type == "cpu":
        torch.set_num_threads(pool.model.cpu_threads or len(os.sched_getaffinity(0)))
    num_blocks = kv_pool_blocks(pool, window, model.config, dtype)
    kv_pool = PagedKVPool(model.config, num_blocks, pool.engine.block_size, dtype=dtype, device=device)
    logger.info(
        "pool %s on %s (%d threads): %s; %.1f MiB allocated",
        pool.name,
        device,
        torch.get_num_threads(),
        window.describe(),
        kv_pool.num_bytes / 2**20,
    )
    lora = pool_lora(pool, model)
    tier = build_kv_tier(kv_pool, pool.engine.kv_tier, pool.name)
    return ModelRunner(model, kv_pool, kv_tier=tier, lora=lora)


def pool_lora(pool: PoolConfig, model: MuseForCausalLM) -> LoraWeights | None:
    """Slots for the pool's adapters (`pool.lora`), attached to the model's projections; allocated
    beside (not within) `engine.kv_cache_bytes`. None where the pool serves no adapters."""
    if not pool.lora.enabled:
        return None
    weight = model.model.embed_tokens.weight
    lora = LoraWeights(model.config, pool.lora.max_loaded_adapters, pool.lora.max_rank, weight.dtype, weight.device)
    lora.attach(model)
    logger.info(
        "pool %s: %d adapter slots of rank %d, %.1f MiB beside the KV cache",
        pool.name, lora.num_slots, lora.max_rank, lora.num_bytes / 2**20,
    )  # fmt: skip
    return lora


def start_window(pool: PoolConfig, arch: MuseConfig) -> ContextWindow:
    """The pool's context window at replica start; ValueError when the KV cache is too small."""
    window = context_window(pool, arch)
    check_min_context(pool, window)
    return window


def kv_pool_blocks(pool: PoolConfig, window: ContextWindow, arch: MuseConfig, dtype: torch.dtype) -> int:
    """The blocks to allocate: the window's, which must be what torch's sizes give."""
    per_block = kv_bytes_per_block(arch, pool.engine.block_size, dtype)
    if pool.engine.kv_cache_bytes // per_block != window.num_blocks:
        raise AssertionError(
            f"pool {pool.name}: the window counts {window.num_blocks} KV blocks, torch's {dtype} sizes give "
            f"{pool.engine.kv_cache_bytes // per_block}"
        )
    return window.num_blocks


def load_pool_model(pool: PoolConfig, vocab_size: int, media: MediaLimits | None = None) -> MuseForCausalLM:
    return build_pool_model(pool, pool_architecture(pool, vocab_size, media))


def build_pool_model(pool: PoolConfig, arch: MuseConfig) -> MuseForCausalLM:
    spec = pool.model
    return build_model(
        arch,
        load_format=spec.load_format,
        seed=spec.seed,
        dtype=getattr(torch, spec.dtype),
        path=spec.path,
        device=resolve_device(spec.device),
        cpu_gemm=spec.cpu_gemm,
    )


def pool_architecture(pool: PoolConfig, vocab_size: int, media: MediaLimits | None = None) -> MuseConfig:
    """`vocab_size`: the tokenizer's, which the model's must cover. With `media`, dummy weights get
    image and audio projectors of its feature dims; a checkpoint's projectors (from its config)
    must match them."""
    return model_architecture(pool.model, vocab_size, media, pool.name)


def model_architecture(
    spec: ModelConfig | DraftModelConfig, vocab_size: int, media: MediaLimits | None, name: str
) -> MuseConfig:
    """A model's shape (a pool's, or its draft's) from its dummy size or its checkpoint's config."""
    if spec.load_format != "dummy":
        assert spec.path is not None
        arch = MuseConfig.from_hf_dict(read_checkpoint(spec.path, spec.load_format).hf_config)
    else:
        arch = MuseConfig.named(spec.size, vocab_size=vocab_size)
        if media is not None:
            arch = replace(arch, image_feature_dim=media.image_feature_dim, audio_feature_dim=media.audio_feature_dim)
    if media is not None:
        check_media_dims(arch, {"image": media.image_feature_dim, "audio": media.audio_feature_dim}, name)
    if arch.vocab_size < vocab_size:
        raise ValueError(f"model vocab ({arch.vocab_size}) is smaller than the tokenizer's ({vocab_size})")
    return arch


def draft_runner(pool: PoolConfig, target: ModelRunner, vocab_size: int, media: MediaLimits | None) -> ModelRunner:
    """The pool's draft model (`engine.speculative.draft`) on the target's device, over a KV pool
    of the target's blocks (`runner.draft`). ValueError when its vocabulary differs."""
    spec = pool.engine.speculative.draft
    assert spec is not None, "method draft has a draft model (config validation)"
    arch = model_architecture(spec, vocab_size, media, f"{pool.name} (draft)")
    if arch.vocab_size != target.model.config.vocab_size:
        raise ValueError(
            f"pool {pool.name}: the draft model's vocabulary ({arch.vocab_size}) differs from the target's "
            f"({target.model.config.vocab_size}); a draft model needs the target's tokenizer"
        )
    model = build_model(
        arch, load_format=spec.load_format, seed=spec.seed, dtype=getattr(torch, spec.dtype), path=spec.path,
        device=target.device, cpu_gemm=pool.model.cpu_gemm,
    )  # fmt: skip
    kv_dtype = getattr(torch, spec.dtype)
    kv_pool = PagedKVPool(arch, target.num_blocks, pool.engine.block_size, dtype=kv_dtype, device=target.device)
    logger.info(
        "pool %s: draft model of %d layers x %d, %.1f MiB of draft KV beside the target's",
        pool.name, arch.num_hidden_layers, arch.hidden_size, kv_pool.num_bytes / 2**20,
    )  # fmt: skip
    return ModelRunner(model, kv_pool, cuda_graphs=False)
