"""A pool's LoRA adapters: which exist, how many stay resident per replica, and their largest rank."""

from __future__ import annotations

from pydantic import Field, model_validator

from museserve.config.base import Section

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AdapterSource(Section):
    """One adapter named in config: a PEFT directory (`adapter_config.json` and
    `adapter_model.safetensors`)."""

    name: str = Field(..., pattern=ADAPTER_NAME, description="What requests name: `model: POOL:NAME` or `adapter`.")
    path: str = Field(..., min_length=1, description="The adapter's directory.")


class LoraConfig(Section):
    """PEFT LoRA adapters of the pool's base model, applied per request on top of the shared base
    weights (never merged into them): requests for different adapters, and for none, share a step.
    An adapter is loaded into a replica when a request first needs it, and evicted (least recently
    used, never while a request uses it) to make room for another."""

    adapters: tuple[AdapterSource, ...] = Field((), description="Adapters named one by one.")
    directory: str | None = Field(
        None,
        description="A store of adapters: each subdirectory holding an adapter_config.json is an adapter named "
        "after it. Read when a name is looked up, so adapters added later are found. In a cluster, a volume "
        "mounted at the same path in the gateway and model pods (a bucket through a CSI driver, or NFS).",
    )
    max_loaded_adapters: int = Field(
        8,
        ge=1,
        le=256,
        description="Adapters resident at once per replica. Each slot holds max_rank x (in + out features of the "
        "seven decoder projections) x layers weights in the model's dtype, allocated beside engine.kv_cache_bytes "
        "(logged at start; about 19 MiB per slot for SmolLM2-135M at rank 16 in float32).",
    )
    max_rank: int = Field(16, ge=1, le=256, description="Largest LoRA rank (r) served; a larger one is refused.")
    load_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Bound on bringing an adapter in for a request: waiting for a slot (all of them in use) plus "
        "reading and validating its files. Past it the request fails with UNAVAILABLE.",
    )

    @model_validator(mode="after")
    def _names_unique(self) -> LoraConfig:
        names = [a.name for a in self.adapters]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"lora.adapters names must be unique; repeated: {', '.join(repeated)}")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.adapters) or self.directory is not None


class AdapterWishes(Section):
    """An operator's live wishes for a pool's adapters, in its deployment's Serve `user_config`
    (`museserve ops adapters load|unload`): applied to every replica without a restart."""

    keep: tuple[str, ...] = Field((), description="Adapters loaded now on every replica and never evicted.")
    disabled: tuple[str, ...] = Field((), description="Adapters refused (NOT_FOUND) and evicted once idle.")
