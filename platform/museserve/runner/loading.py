"""Builds a pool's model and the runner that executes it in this process, on the pool's
device, its KV pool sized from the pool's memory budget."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from museserve.checkpoint import read_checkpoint
from museserve.config import MediaLimits, PoolConfig
from museserve.model.config import MuseConfig
from museserve.model.loader import build_model, check_media_dims, resolve_device
from museserve.model.muse import MuseForCausalLM
from museserve.runner.kv_pool import PagedKVPool, kv_bytes_per_block
from museserve.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def local_runner(pool: PoolConfig, vocab_size: int, media: MediaLimits | None = None) -> ModelRunner:
    """A runner in this process on the pool's device, its KV pool sized from the pool's memory budget."""
    engine = pool.engine
    model = load_pool_model(pool, vocab_size, media)
    dtype = getattr(torch, pool.model.dtype)
    device = next(model.parameters()).device
    num_blocks = engine.kv_cache_bytes // kv_bytes_per_block(model.config, engine.block_size, dtype)
    if num_blocks < 1:
        raise ValueError(f"pool {pool.name}: engine.kv_cache_bytes holds no KV block of this model")
    kv_pool = PagedKVPool(model.config, num_blocks, engine.block_size, dtype=dtype, device=device)
    logger.info(
        "pool %s on %s: KV cache of %d blocks x %d tokens = %d tokens (%.1f MiB)",
        pool.name,
        device,
        num_blocks,
        engine.block_size,
        num_blocks * engine.block_size,
        kv_pool.num_bytes / 2**20,
    )
    return ModelRunner(model, kv_pool)


def load_pool_model(pool: PoolConfig, vocab_size: int, media: MediaLimits | None = None) -> MuseForCausalLM:
    spec = pool.model
    return build_model(
        pool_architecture(pool, vocab_size, media),
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
    spec = pool.model
    if spec.load_format != "dummy":
        assert spec.path is not None
        arch = MuseConfig.from_hf_dict(read_checkpoint(spec.path, spec.load_format).hf_config)
    else:
        arch = MuseConfig.named(spec.size, vocab_size=vocab_size)
        if media is not None:
            arch = replace(arch, image_feature_dim=media.image_feature_dim, audio_feature_dim=media.audio_feature_dim)
    if media is not None:
        check_media_dims(arch, {"image": media.image_feature_dim, "audio": media.audio_feature_dim}, pool.name)
    if arch.vocab_size < vocab_size:
        raise ValueError(f"model vocab ({arch.vocab_size}) is smaller than the tokenizer's ({vocab_size})")
    return arch
