"""A pool's context window: each of its three bounds, the KV arithmetic under every dtype and
parallel split, the start-up refusal, and the same figure wherever a tier derives it. No torch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from museserve.config import MediaLimits, PoolConfig, parse_config
from museserve.config.context_window import WindowBound, check_min_context, context_window
from museserve.model.config import MuseConfig
from museserve.parallel.plan import shard_architecture, stage_layers
from museserve.preprocess.pool_model import PoolModel, check_pools, pool_model, pool_windows
from museserve.preprocess.tokenizer import MuseTokenizer
from tests.real_model import SMOLLM2_GGUF

MiB = 1 << 20
TINY = MuseConfig.named("tiny", vocab_size=1)  # 2 layers x 2 KV heads x 16: 512 bytes a token in float32
SMALL = MuseConfig.named("small", vocab_size=1)  # 8 layers x 2 KV heads x 64: 8192 bytes a token in float32


def pool(size: str = "tiny", dtype: str = "float32", parallel: dict | None = None, **engine: Any) -> PoolConfig:
    return PoolConfig(name="p", model={"size": size, "dtype": dtype}, engine=engine, parallel=parallel or {})


def test_the_configured_context_length_when_the_cache_holds_more() -> None:
    window = context_window(pool(), TINY)  # 256 MiB of 512-byte tokens: 524,288
    assert (window.tokens, window.bound) == (262_144, WindowBound.CONTEXT_LENGTH)
    assert (window.kv_tokens, window.num_blocks, window.bytes_per_token) == (524_288, 32_768, 512)
    assert window.max_output_tokens == 32_768  # engine.max_output_tokens, already below the window


@pytest.mark.parametrize(
    ("dtype", "kv_dtype", "tokens"),
    [("float32", "model", 32_768), ("float32", "bfloat16", 65_536), ("bfloat16", "model", 65_536),
     ("float16", "model", 65_536), ("float32", "float16", 65_536)],
)  # fmt: skip
def test_the_kv_cache_bounds_muse_small_by_its_element_type(dtype: str, kv_dtype: str, tokens: int) -> None:
    window = context_window(pool("small", dtype, kv_cache_dtype=kv_dtype), SMALL)
    assert (window.tokens, window.bound, window.kv_tokens) == (tokens, WindowBound.KV_CAPACITY, tokens)
    assert window.bytes_per_token == 2 * 8 * 2 * 64 * (4 if tokens == 32_768 else 2)
    assert window.kv_cache_dtype == (dtype if kv_dtype == "model" else kv_dtype)
    assert window.max_output_tokens == min(32_768, tokens - 1)  # clamped below the window
    assert f"its KV cache holds {tokens} tokens" in window.limit


def test_the_cache_counts_whole_blocks_only() -> None:
    block = 16 * 512
    window = context_window(pool(kv_cache_bytes=10 * block + block - 1, block_size=16), TINY)
    assert (window.num_blocks, window.kv_tokens, window.tokens) == (10, 160, 160)
    assert context_window(pool(kv_cache_bytes=block - 1, block_size=16), TINY).num_blocks == 0


def test_equal_bounds_name_the_configured_length() -> None:
    window = context_window(pool(context_length=2048, max_output_tokens=512, kv_cache_bytes=2048 * 512), TINY)
    assert (window.tokens, window.bound, window.kv_tokens) == (2048, WindowBound.CONTEXT_LENGTH, 2048)
    assert window.limit == "(its configured context_length)"


def test_the_checkpoint_positions_bound_the_window() -> None:
    window = context_window(pool(), replace(TINY, max_position_embeddings=8192, rope_scaling=None))
    assert (window.tokens, window.bound, window.max_positions) == (8192, WindowBound.CHECKPOINT_POSITIONS, 8192)
    assert window.max_output_tokens == 8191
    assert "supports 8192 positions" in window.limit and "set by checkpoint positions" in window.describe()


@pytest.mark.parametrize(("tensor", "pipeline"), [(1, 1), (2, 1), (1, 3), (2, 3)])
def test_a_parallel_replica_holds_the_tokens_its_workers_allocate(tensor: int, pipeline: int) -> None:
    """kv_cache_bytes is the replica's: each worker allocates num_blocks blocks of its stage's layers
    and kv_heads / tensor heads (parallel.stage); together exactly the whole model's blocks."""
    config = pool("small", parallel={"tensor": tensor, "pipeline": pipeline}, kv_cache_bytes=96 * MiB + 5)
    window = context_window(config, SMALL)
    assert window == context_window(pool("small", kv_cache_bytes=96 * MiB + 5), SMALL)  # the split changes nothing
    per_token = sum(
        shard_architecture(SMALL, tensor, layers).kv_cache_bytes_per_token(4) * tensor
        for layers in stage_layers(SMALL.num_hidden_layers, pipeline)
    )
    allocated = window.num_blocks * window.block_size * per_token
    assert per_token == window.bytes_per_token and allocated <= config.engine.kv_cache_bytes
    assert config.engine.kv_cache_bytes - allocated < window.block_size * window.bytes_per_token
    assert (window.tokens, window.bound) == (12_288, WindowBound.KV_CAPACITY)


def test_a_replica_refuses_a_cache_below_min_context_per_request() -> None:
    small = pool(context_length=8192, max_output_tokens=512, kv_cache_bytes=1 * MiB, block_size=16)
    window = context_window(small, TINY)
    assert window.kv_tokens == 2048
    with pytest.raises(ValueError) as refused:
        check_min_context(small, window)  # unset: min(4096, context_length)
    message = str(refused.value)
    for part in ("engine.kv_cache_bytes (1048576)", "holds 2048 tokens", "min_context_per_request needs 4096",
                 "at least 2097152", "512 bytes per token"):  # fmt: skip
        assert part in message
    roomy = pool(context_length=8192, max_output_tokens=512, kv_cache_bytes=2 * MiB)
    check_min_context(roomy, context_window(roomy, TINY))
    explicit = pool(context_length=8192, max_output_tokens=512, kv_cache_bytes=1 * MiB, min_context_per_request=2048)
    check_min_context(explicit, context_window(explicit, TINY))


def test_min_context_per_request_defaults_within_context_length_and_is_validated() -> None:
    assert pool().engine.min_context_tokens == 4096
    assert pool(context_length=1024, max_output_tokens=512).engine.min_context_tokens == 1024
    assert pool(min_context_per_request=100).engine.min_context_tokens == 100
    with pytest.raises(ValidationError, match=r"min_context_per_request \(2048\) exceeds context_length \(1024\)"):
        pool(context_length=1024, max_output_tokens=512, min_context_per_request=2048)


def test_the_preprocess_tier_derives_the_runners_window_for_dummy_weights() -> None:
    tokenizer = MuseTokenizer.load(None)
    config = pool("small", kv_cache_dtype="bfloat16")
    assert PoolModel.muse(tokenizer).window(config) == context_window(
        config, MuseConfig.named("small", vocab_size=tokenizer.vocab_size)
    )


def test_a_checkpoints_positions_come_from_its_config_json(tmp_path: Path) -> None:
    arch = replace(MuseConfig.named("tiny", vocab_size=MuseTokenizer.load(None).vocab_size), rope_scaling=None)
    (tmp_path / "config.json").write_text(json.dumps(replace(arch, max_position_embeddings=1024).to_hf_dict()))
    data = {"pools": [{"name": "short", "model": {"load_format": "safetensors", "path": str(tmp_path)}}]}
    config = check_pools(parse_config(data))  # context_length 262,144 over 1,024 positions: the window says so
    window = pool_windows(config)["short"]
    assert (window.tokens, window.bound, window.max_positions) == (1024, WindowBound.CHECKPOINT_POSITIONS, 1024)


def test_the_shipped_gguf_serves_its_8192_positions() -> None:
    gguf = PoolConfig(
        name="smol", model={"load_format": "gguf", "path": SMOLLM2_GGUF}, engine={"kv_cache_bytes": 512 * MiB}
    )
    model = pool_model(gguf, MediaLimits())
    window = model.window(gguf)
    assert (window.tokens, window.bound, window.kv_tokens) == (8192, WindowBound.CHECKPOINT_POSITIONS, 11_648)
    assert model.max_positions == 8192 and window.bytes_per_token == 46_080
