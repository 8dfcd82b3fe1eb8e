"""A model pool's section: its weights, its engine, its deployment, and the traffic it
shares with a candidate pool (A/B split, shadow mirroring)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from museserve.config.base import DeploymentConfig, Section
from museserve.config.lora import LoraConfig
from museserve.config.routing import RoutingConfig
from museserve.config.speculative import SpeculativeConfig
from museserve.domain import Mode
from museserve.model.config import MuseConfig, check_parallel


class ModelConfig(Section):
    size: str = Field("tiny", description="Named architecture size (tiny, small, ...) for dummy weights.")
    load_format: Literal["dummy", "safetensors", "gguf"] = Field(
        "dummy",
        description="Where weights come from: dummy (seeded random weights of `size`, the bundled tokenizer), "
        "safetensors (a Hugging Face checkpoint directory), gguf (one GGUF file, dequantized to `dtype`).",
    )
    path: str | None = Field(
        None,
        description="The checkpoint: a directory (safetensors) or a .gguf file. `package:NAME/FILE` names FILE "
        "inside the installed Python package NAME (found without importing it).",
    )
    seed: int = Field(0, description="Seed of the dummy weights.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where weights, KV cache and sampling live; auto: cuda when PyTorch sees a GPU, else cpu."
    )
    cpu_threads: int = Field(
        0,
        ge=0,
        description="On a CPU: threads of the model's kernels. 0: every core this process may run on (Ray starts "
        "replica processes with OMP_NUM_THREADS=1, which would leave all but one core idle).",
    )
    cpu_gemm: Literal["onednn", "torch"] = Field(
        "onednn",
        description="On a CPU: linear layers on oneDNN with weights packed once at load (float32, or bfloat16 "
        "where the CPU has it), or PyTorch's own matmul.",
    )

    @model_validator(mode="after")
    def _path_matches_format(self) -> ModelConfig:
        if self.load_format != "dummy" and not self.path:
            raise ValueError(f"path is required when load_format is {self.load_format}")
        return self


DEFAULT_MIN_CONTEXT = 4096  # tokens a replica's KV cache holds for one request, unless configured


class KVTierConfig(Section):
    """A second KV-cache tier per replica: prefix blocks evicted from the device's KV cache are
    copied here and copied back on a later prefix hit instead of being recomputed."""

    bytes: int = Field(
        0,
        ge=0,
        description="Size of the tier; it holds bytes // (KV bytes per block, in the KV cache's dtype) blocks. "
        "0: off (evicted prefix blocks are dropped).",
    )
    path: str | None = Field(
        None,
        description="null: the tier is host memory (pinned beside a GPU). A directory: the tier is a file of "
        "`bytes` there, one per replica, reserved at start and removed at once (it never outlives the process); "
        "a disk tier for CPU replicas.",
    )


class EngineConfig(Section):
    context_length: int = Field(
        262_144,
        ge=16,
        description="Prompt plus output tokens per request, at most. The window served is the smallest of this, "
        "the positions the checkpoint supports and the tokens kv_cache_bytes holds (logged at start, reported "
        "by ListModels and /v1/models).",
    )
    max_output_tokens: int = Field(32_768, ge=1, description="Largest max_output_tokens a request may ask for.")
    default_max_output_tokens: int = Field(512, ge=1, description="Used when a request sets none.")
    default_thinking_budget: int = Field(1024, ge=0, description="Reasoning tokens when a request sets none.")
    max_running_requests: int = Field(64, ge=1, description="Requests in one batch per replica.")
    max_waiting_requests: int = Field(256, ge=0, description="Requests queued per replica beyond the running ones.")
    max_batched_tokens: int = Field(2048, ge=1, description="Token budget of one step: prefill chunks plus decodes.")
    max_prefill_chunk: int = Field(512, ge=1, description="Most prompt tokens one request computes in one step.")
    max_prefill_attention: int = Field(
        1 << 23,
        ge=1,
        description="While other requests run: most (new token x earlier position) pairs one prefill chunk attends "
        "in a step. A chunk deep into a long prompt shrinks to fit (to no less than block_size tokens), so a huge "
        "prefill takes a fair share of each step and decodes keep their pace.",
    )
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV-cache block.")
    kv_cache_bytes: int = Field(256 << 20, ge=1, description="Memory for the KV cache per replica; sets its blocks.")
    kv_cache_dtype: Literal["model", "bfloat16", "float16"] = Field(
        "model",
        description="Element type of the KV cache: the model's dtype, or bfloat16/float16 (half the bytes of a "
        "float32 model's, so twice the tokens in kv_cache_bytes; attention then runs in that type).",
    )
    min_context_per_request: int | None = Field(
        None,
        ge=1,
        description="Tokens the KV cache must hold for one request, or the replica refuses to start. "
        f"Unset: {DEFAULT_MIN_CONTEXT} or context_length, whichever is smaller; set: at most context_length.",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of equal prefixes (per tenant).")
    kv_tier: KVTierConfig = Field(
        KVTierConfig(), description="Host-memory or disk tier for prefix blocks evicted from the KV cache."
    )
    stream_interval_ms: float = Field(
        15.0, ge=0, description="Deltas produced within this window are sent as one message (first token never waits)."
    )
    priority_preemption: bool = Field(
        True,
        description="When the batch is full, a waiting request of a higher priority (tier) preempts the "
        "lowest-priority running one, which is recomputed later.",
    )
    min_low_priority_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Share of max_running_requests that requests of lower priority keep against priority "
        "preemption, so lower tiers still progress under a flood of higher ones.",
    )
    overlap_scheduling: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Plan step N+1 and stream step N's tokens while the device computes step N+1 (same "
        "outputs). auto: on where the model runs on a GPU; on a CPU the loop and the model share the cores. "
        "Off while speculative decoding is on: each step then verifies what the previous one accepted.",
    )
    speculative: SpeculativeConfig = Field(
        SpeculativeConfig(), description="Speculative decoding: tokens proposed, then verified in one pass."
    )

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> EngineConfig:
        if self.default_max_output_tokens > self.max_output_tokens:
            raise ValueError("default_max_output_tokens exceeds max_output_tokens")
        if self.max_output_tokens >= self.context_length:
            raise ValueError("max_output_tokens must be below context_length")
        if self.max_prefill_chunk > self.max_batched_tokens:
            raise ValueError("max_prefill_chunk exceeds max_batched_tokens")
        if self.speculative.enabled and self.overlap_scheduling == "on":
            raise ValueError("overlap_scheduling on cannot be used with speculative decoding (set it to auto or off)")
        if self.min_context_per_request is not None and self.min_context_per_request > self.context_length:
            raise ValueError(
                f"min_context_per_request ({self.min_context_per_request}) exceeds context_length "
                f"({self.context_length})"
            )
        return self

    @property
    def min_context_tokens(self) -> int:
        """What the KV cache must hold for one request: `min_context_per_request` resolved."""
        if self.min_context_per_request is not None:
            return self.min_context_per_request
        return min(DEFAULT_MIN_CONTEXT, self.context_length)


class AdmissionConfig(Section):
    """Whether a gateway admits a request into the pool, decided from the replicas' live state."""

    policy: Literal["live", "static"] = Field(
        "live",
        description="live: each request is admitted only if its estimated queueing delay on the pool (from what "
        "the replicas report every routing.stats_period_s, its prompt included) fits its tier's TTFT objective "
        "and its deadline; max_in_flight stays a hard cap. static: max_in_flight alone.",
    )
    ttft_objective_s: float = Field(
        2.0, gt=0, description="The pool's time-to-first-token objective, for tiers that set none."
    )
    admit_within: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A request is admitted while its estimated wait is at most this fraction of its TTFT objective "
        "(and of the time left to its deadline). The rest absorbs the estimate's error, what other gateways sent "
        "since the last report, and the time a request spends outside the model's queue.",
    )
    stale_after_s: float = Field(
        5.0,
        gt=0,
        description="A replica report older than this is not used; with no fresh report, max_in_flight alone bounds.",
    )


class ContemplatingConfig(Section):
    """Several agents reason in parallel on one prompt, then a synthesis pass answers."""

    default_agents: int = Field(4, ge=2, le=8, description="Agents when a request sets none.")
    agent_answer_tokens: int = Field(
        256, ge=1, description="Answer tokens of each agent (after its reasoning); the synthesis reads these."
    )
    synthesis_thinking_budget: int = Field(128, ge=0, description="Reasoning tokens of the synthesis pass.")
    quorum: float = Field(
        0.5, gt=0.0, le=1.0, description="Fraction of agents that must answer for the synthesis to run."
    )


class ABSplit(Section):
    """A share of this pool's traffic served by a candidate pool, sticky per user."""

    candidate: str = Field(..., description="Pool that serves the share.")
    share: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of users (by hash) sent to the candidate.")


class MirrorConfig(Section):
    """Shadow traffic: a sampled copy of requests, sent detached to a candidate pool and
    recorded beside the primary's answer for offline grading. Never counts against quotas."""

    candidate: str = Field(..., description="Pool that receives the copies.")
    fraction: float = Field(0.02, ge=0.0, le=1.0, description="Fraction of requests mirrored (by request id hash).")
    timeout_s: float = Field(60.0, gt=0, description="Deadline of one mirrored call.")
    max_in_flight: int = Field(16, ge=1, description="Mirrored calls at once per gateway replica; beyond: skipped.")
    content: Literal["digest", "outputs", "full"] = Field(
        "outputs",
        description="What a record keeps: digest (hashes and counts only), outputs (plus both answers), "
        "full (plus the input messages).",
    )


class ParallelConfig(Section):
    """How many devices one replica of the pool spans: `tensor` ranks shard each layer
    (DeepSpeed AutoTP; the KV cache by KV heads) inside each of `pipeline` stages of contiguous
    layers, each rank a Ray actor (see `museserve.parallel`). Deployments reserve `world_size`
    GPUs per replica for it."""

    tensor: int = Field(1, ge=1, le=64, description="Shards of each layer (one TP group per stage); divides the heads.")
    pipeline: int = Field(1, ge=1, le=64, description="Pipeline stages of the decoder layers; at most the layers.")
    worker_cpus: float = Field(
        0.01, ge=0, description="CPUs each worker actor reserves: tiny for CPU tests, 1 or more beside a GPU."
    )
    step_timeout_s: float = Field(60.0, gt=0, description="Bound on one step across the workers; past it: UNAVAILABLE.")
    start_timeout_s: float = Field(
        300.0, gt=0, description="Bound on placing, starting and loading the workers, also when rebuilding them."
    )

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline


_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PoolConfig(Section):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Model name clients ask for.")
    modes: tuple[Mode, ...] | None = Field(
        None,
        min_length=1,
        description="Modes accepted. Unset: every mode the checkpoint can serve (thinking needs reasoning markers "
        "in its vocabulary); a listed mode it cannot serve stops start-up.",
    )
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=128)
    routing: RoutingConfig = Field(RoutingConfig(), description="How a replica is chosen for each request.")
    admission: AdmissionConfig = Field(AdmissionConfig(), description="Admission from the replicas' live state.")
    max_in_flight: int = Field(
        256, ge=1, description="Hard cap on requests a gateway replica lets into this pool at once; beyond: shed."
    )
    contemplating: ContemplatingConfig = ContemplatingConfig()
    parallel: ParallelConfig = Field(ParallelConfig(), description="Tensor and pipeline parallel workers per replica.")
    lora: LoraConfig = Field(LoraConfig(), description="LoRA adapters of the base model, served per request.")
    ab: ABSplit | None = Field(None, description="A/B split to a candidate pool.")
    mirror: MirrorConfig | None = Field(None, description="Shadow mirroring to a candidate pool.")

    @property
    def kv_cache_dtype(self) -> str:
        """The KV cache's element type, a torch dtype name: `engine.kv_cache_dtype` resolved."""
        return self.model.dtype if self.engine.kv_cache_dtype == "model" else self.engine.kv_cache_dtype

    @property
    def routes_by_prefix(self) -> bool:
        """Its handles send each request where its prefix is cached (`routing.policy`), which
        needs a prefix cache to route by."""
        return self.routing.policy == "prefix" and self.engine.enable_prefix_caching

    @property
    def kv_element_bytes(self) -> int:
        return _ELEMENT_BYTES[self.kv_cache_dtype]

    @model_validator(mode="after")
    def _parallel_fits_model(self) -> PoolConfig:
        # Dummy shapes are known here; a checkpoint's are checked when its config.json is read.
        if self.parallel.world_size > 1 and self.model.load_format == "dummy":
            check_parallel(
                MuseConfig.named(self.model.size, vocab_size=1), self.parallel.tensor, self.parallel.pipeline
            )
        return self

    @model_validator(mode="after")
    def _kv_tier_supported(self) -> PoolConfig:
        if self.engine.kv_tier.bytes and self.parallel.world_size > 1:
            raise ValueError("engine.kv_tier is not supported with parallel workers (parallel.tensor x pipeline > 1)")
        if self.engine.speculative.method == "draft" and self.parallel.world_size > 1:
            raise ValueError("engine.speculative.method draft is not supported with parallel workers")
        if self.engine.speculative.method == "draft" and self.engine.kv_tier.bytes:
            raise ValueError("engine.speculative.method draft cannot be used with engine.kv_tier yet")
        if self.lora.enabled and self.parallel.world_size > 1:
            raise ValueError("lora adapters are not supported with parallel workers (parallel.tensor x pipeline > 1)")
        if self.engine.kv_tier.bytes and not self.engine.enable_prefix_caching:
            raise ValueError("engine.kv_tier keeps prefix-cache blocks: it needs engine.enable_prefix_caching")
        return self
