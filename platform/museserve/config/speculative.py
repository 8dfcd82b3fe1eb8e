"""A pool's speculative decoding: who proposes tokens, how many, and when it stops paying."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from museserve.config.base import Section


class DraftModelConfig(Section):
    """A smaller checkpoint with the target's tokenizer, run in the same replica on the target's
    device, with a KV cache of its own: the target's block count, in the draft's shape and dtype,
    allocated beside (not within) `engine.kv_cache_bytes`."""

    size: str = Field("tiny", description="Named architecture size for dummy weights.")
    load_format: Literal["dummy", "safetensors", "gguf"] = "dummy"
    path: str | None = Field(None, description="Its checkpoint, as `model.path` (directory, .gguf, package:).")
    seed: int = Field(0, description="Seed of dummy weights.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _path_matches_format(self) -> DraftModelConfig:
        if self.load_format != "dummy" and not self.path:
            raise ValueError(f"path is required when load_format is {self.load_format}")
        return self


class SpeculativeConfig(Section):
    method: Literal["off", "ngram", "draft"] = Field(
        "off",
        description="off: one token per step. ngram: prompt lookup, proposing what followed the latest earlier "
        "occurrence of the last tokens in the prompt and output (no weights; any checkpoint). draft: a smaller "
        "model (`draft`) proposes. Either way the target verifies all proposals of a step in one pass: greedy "
        "answers are unchanged, sampled ones keep their distribution.",
    )
    num_speculative_tokens: int = Field(
        4, ge=1, le=16, description="Most tokens proposed per request per step; each request adapts below it."
    )
    prompt_lookup_max: int = Field(4, ge=1, le=16, description="ngram: longest suffix matched.")
    prompt_lookup_min: int = Field(2, ge=1, le=16, description="ngram: shortest suffix matched.")
    min_acceptance: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="A request whose measured acceptance rate falls below this pauses proposing, for a number of "
        "steps that doubles each time, then tries again.",
    )
    max_batch: int | None = Field(
        None,
        ge=0,
        description="Speculate only in steps of at most this many running requests; beyond, decode is "
        "compute-bound and verifying extra tokens costs what it saves. Unset: 16 on a CPU, 32 on a GPU.",
    )
    draft: DraftModelConfig | None = Field(None, description="The draft model, for method draft.")

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min exceeds prompt_lookup_max")
        if self.method == "draft" and self.draft is None:
            raise ValueError("method draft needs a draft model (speculative.draft)")
        return self

    @property
    def enabled(self) -> bool:
        return self.method != "off"

    def batch_limit(self, on_accelerator: bool) -> int:
        """`max_batch` resolved for the device the pool runs on."""
        if self.max_batch is not None:
            return self.max_batch
        return GPU_MAX_BATCH if on_accelerator else CPU_MAX_BATCH


# On a 2-core AVX-512 Xeon, SmolLM2-135M with n-gram proposals still gained 1.26x at 16 running
# requests and 1.1x at 32 and 64 (bench_spec_decode, `speedup_by_batch_without_cutoff`): fewer
# steps save per-step costs there. A CPU with half the FLOPs (AVX2 only) is compute-bound sooner,
# so the default stops at 16. On a GPU, decode stays memory-bound longer but each step costs
# less beside it; 32 is the usual point where n-gram gains fade (not measured here).
CPU_MAX_BATCH = 16
GPU_MAX_BATCH = 32
