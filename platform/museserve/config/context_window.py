"""The context window a pool serves: the most prompt + reasoning + output tokens one request
may use, derived once from the pool's config and its model's shape, the same in every tier.

Three bounds, the smallest sets it: `engine.context_length`, the positions the checkpoint
supports (`max_position_embeddings` of its config.json or GGUF, or the named dummy shape's),
and the tokens the KV cache holds for one request, `kv_cache_bytes` in whole blocks. The
gateway and the preprocess tier refuse a request over it before any rate-limit charge; the
engine re-checks it; the runner allocates exactly `num_blocks` (it asserts so).

`kv_cache_bytes` is the replica's budget. Under tensor x pipeline parallelism each rank holds
`num_blocks` blocks of its stage's layers and kv_heads / tensor of the heads
(`parallel.plan.shard_architecture`): the ranks' pools add up to the whole model's, so the
tokens held do not depend on the split (`parallel.executor` sizes its workers from this).

Torch-free: element sizes come from the dtype's name (`PoolConfig.kv_element_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from museserve.config.pool import PoolConfig
from museserve.model.config import MuseConfig


class WindowBound(StrEnum):
    """Which bound set a window; in this order the first of equal bounds wins."""

    CONTEXT_LENGTH = "context_length"
    CHECKPOINT_POSITIONS = "checkpoint positions"
    KV_CAPACITY = "KV capacity"


@dataclass(frozen=True, slots=True)
class ContextWindow:
    pool: str
    tokens: int  # the window: prompt + reasoning + output of one request
    bound: WindowBound
    context_length: int  # engine.context_length
    max_positions: int  # the checkpoint's (or named shape's) max_position_embeddings
    kv_tokens: int  # num_blocks * block_size: what the KV cache holds
    num_blocks: int  # what the runner allocates (0: not one block fits kv_cache_bytes)
    block_size: int
    bytes_per_token: int  # K and V of every layer and KV head, summed over the replica's ranks
    kv_cache_bytes: int
    kv_cache_dtype: str  # a torch dtype name
    max_output_tokens: int  # engine.max_output_tokens, clamped below the window

    @property
    def limit(self) -> str:
        """What set the window, for a client: '(its KV cache holds 32768 tokens)'."""
        if self.bound is WindowBound.KV_CAPACITY:
            return f"(its KV cache holds {self.kv_tokens} tokens)"
        if self.bound is WindowBound.CHECKPOINT_POSITIONS:
            return f"(its checkpoint supports {self.max_positions} positions)"
        return "(its configured context_length)"

    def describe(self) -> str:
        """Every number behind the window, for logs and start-up errors."""
        return (
            f"context window {self.tokens} tokens, set by {self.bound}: context_length {self.context_length}, "
            f"checkpoint positions {self.max_positions}, KV cache {self.kv_tokens} tokens "
            f"({self.num_blocks} blocks x {self.block_size} at {self.bytes_per_token} bytes per token, "
            f"{self.kv_cache_dtype}, kv_cache_bytes {self.kv_cache_bytes})"
        )


def context_window(pool: PoolConfig, arch: MuseConfig) -> ContextWindow:
    """`arch`: the pool's whole model (its KV shape and positions), as every tier reads it."""
    engine = pool.engine
    bytes_per_token = arch.kv_cache_bytes_per_token(pool.kv_element_bytes)
    num_blocks = engine.kv_cache_bytes // (bytes_per_token * engine.block_size)
    kv_tokens = num_blocks * engine.block_size
    bounds = (
        (WindowBound.CONTEXT_LENGTH, engine.context_length),
        (WindowBound.CHECKPOINT_POSITIONS, arch.max_position_embeddings),
        (WindowBound.KV_CAPACITY, kv_tokens),
    )
    bound, tokens = min(bounds, key=lambda b: b[1])  # min keeps the first of equals
    return ContextWindow(
        pool=pool.name,
        tokens=tokens,
        bound=bound,
        context_length=engine.context_length,
        max_positions=arch.max_position_embeddings,
        kv_tokens=kv_tokens,
        num_blocks=num_blocks,
        block_size=engine.block_size,
        bytes_per_token=bytes_per_token,
        kv_cache_bytes=engine.kv_cache_bytes,
        kv_cache_dtype=pool.kv_cache_dtype,
        # A request has at least one prompt token, so an output cap at or past the window would
        # only refuse later; it is clamped here and reported so (ListModels, validation).
        max_output_tokens=max(0, min(engine.max_output_tokens, tokens - 1)),
    )


def check_min_context(pool: PoolConfig, window: ContextWindow) -> None:
    """At replica start: ValueError naming the keys when the KV cache cannot hold
    `engine.min_context_per_request` tokens for one request."""
    needed = pool.engine.min_context_tokens
    if window.kv_tokens >= needed:
        return
    blocks = -(-needed // window.block_size)
    raise ValueError(
        f"pool {pool.name}: engine.kv_cache_bytes ({window.kv_cache_bytes}) holds {window.kv_tokens} tokens of "
        f"this model ({window.num_blocks} blocks x {window.block_size} at {window.bytes_per_token} bytes per token, "
        f"{window.kv_cache_dtype}); engine.min_context_per_request needs {needed}: set kv_cache_bytes to at least "
        f"{blocks * window.block_size * window.bytes_per_token}, a smaller kv_cache_dtype, or lower "
        "min_context_per_request"
    )
