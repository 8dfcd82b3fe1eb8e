"""The one configuration tree, read from YAML.

Layers, outermost first: `MuseServeConfig` holds the server, gateway, preprocess and
model-pool sections; each section owns only its own fields. Every model is frozen and
refuses unknown keys, so a typo fails at start with its key path, not later in a replica.
The environment is read in `read_environment`, called by the CLI, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from museserve.domain import Mode

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "museserve.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Section):
    grpc_port: int = Field(50051, ge=1, le=65535, description="gRPC port (the proxy binds all interfaces).")
    http_host: str = Field("127.0.0.1", description="Address the HTTP proxy binds.")
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    request_timeout_s: float = Field(
        600.0, gt=0, description="End-to-end bound on one request when the client sets no deadline."
    )
    throughput_optimized: bool = Field(
        True,
        description="Ray Serve's throughput-optimized mode: replicas run our code on their own event loop "
        "(so no deployment may block its loop) and buffer request logs.",
    )
    max_request_bytes: int = Field(
        64 << 20, ge=1 << 20, description="Largest gRPC message the proxy accepts; larger: RESOURCE_EXHAUSTED."
    )


class DeploymentConfig(_Section):
    """Ray Serve knobs shared by every tier; each tier sets its own values."""

    num_replicas: int = Field(1, ge=1, description="Replicas of this deployment.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one replica handles at once.")
    max_queued_requests: int = Field(
        1024, ge=-1, description="Requests waiting for a replica before RESOURCE_EXHAUSTED; -1 unbounded."
    )
    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica (0: CPU-light).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica.")


class RequestLimits(_Section):
    """Bounds on what a client may send, checked at the gateway before any work starts."""

    max_messages: int = Field(1024, ge=1, description="Messages per request.")
    max_parts_per_message: int = Field(64, ge=1, description="Content parts per message.")
    max_text_bytes: int = Field(4 << 20, ge=1, description="UTF-8 bytes of all text in a request.")
    max_stop_strings: int = Field(8, ge=0, description="Entries in sampling.stop.")
    max_stop_string_chars: int = Field(64, ge=1, description="Characters per stop string.")
    max_tools: int = Field(128, ge=0, description="Tools per request.")


class GatewayConfig(_Section):
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=1024)
    auth: Literal["none"] = Field("none", description="How callers are identified; none: all are 'anonymous'.")
    redis_url: str | None = Field(None, description="Redis for shared gateway state (rate limits); none: in-process.")
    default_model: str | None = Field(None, description="Pool used when a request names none; first pool if unset.")
    limits: RequestLimits = RequestLimits()
    tier_priorities: dict[str, int] = Field(
        {"default": 1},
        description="Scheduling priority per account tier (lower runs first); tiers not listed run last.",
    )

    def priority_of(self, tier: str) -> int:
        return self.tier_priorities.get(tier, max(self.tier_priorities.values(), default=0) + 1)


class MediaLimits(_Section):
    max_image_bytes: int = Field(20 << 20, ge=1, description="Bytes of one encoded image.")
    max_audio_bytes: int = Field(25 << 20, ge=1, description="Bytes of one encoded audio clip.")


class PreprocessConfig(_Section):
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=256)
    tokenizer: str | None = Field(None, description="tokenizer.json file or directory; none: the bundled one.")
    media: MediaLimits = MediaLimits()


class ModelConfig(_Section):
    size: str = Field("tiny", description="Named architecture size (tiny, small, ...) for dummy weights.")
    load_format: Literal["dummy", "safetensors"] = Field("dummy", description="Where weights come from.")
    path: str | None = Field(None, description="Checkpoint directory, for load_format safetensors.")
    seed: int = Field(0, description="Seed of the dummy weights.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _path_matches_format(self) -> ModelConfig:
        if self.load_format == "safetensors" and not self.path:
            raise ValueError("path is required when load_format is safetensors")
        return self


class EngineConfig(_Section):
    context_length: int = Field(262_144, ge=16, description="Prompt plus output tokens per request.")
    max_output_tokens: int = Field(32_768, ge=1, description="Largest max_output_tokens a request may ask for.")
    default_max_output_tokens: int = Field(512, ge=1, description="Used when a request sets none.")
    default_thinking_budget: int = Field(1024, ge=0, description="Reasoning tokens when a request sets none.")
    max_running_requests: int = Field(64, ge=1, description="Requests in one batch per replica.")
    max_waiting_requests: int = Field(256, ge=0, description="Requests queued per replica beyond the running ones.")
    max_batched_tokens: int = Field(2048, ge=1, description="Token budget of one step: prefill chunks plus decodes.")
    max_prefill_chunk: int = Field(512, ge=1, description="Most prompt tokens one request computes in one step.")
    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV-cache block.")
    kv_cache_bytes: int = Field(256 << 20, ge=1, description="Memory for the KV cache per replica; sets its blocks.")
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of equal prefixes (per tenant).")
    stream_interval_ms: float = Field(
        15.0, ge=0, description="Deltas produced within this window are sent as one message (first token never waits)."
    )

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> EngineConfig:
        if self.default_max_output_tokens > self.max_output_tokens:
            raise ValueError("default_max_output_tokens exceeds max_output_tokens")
        if self.max_output_tokens >= self.context_length:
            raise ValueError("max_output_tokens must be below context_length")
        if self.max_prefill_chunk > self.max_batched_tokens:
            raise ValueError("max_prefill_chunk exceeds max_batched_tokens")
        return self


class PoolConfig(_Section):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Model name clients ask for.")
    modes: tuple[Mode, ...] = Field((Mode.INSTANT, Mode.THINKING), min_length=1, description="Modes accepted.")
    model: ModelConfig = ModelConfig()
    engine: EngineConfig = EngineConfig()
    deployment: DeploymentConfig = DeploymentConfig(max_ongoing_requests=128)


class MuseServeConfig(_Section):
    app_name: str = Field("museserve", description="Ray Serve application name.")
    server: ServerConfig = ServerConfig()
    gateway: GatewayConfig = GatewayConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    pools: tuple[PoolConfig, ...] = Field(..., min_length=1, description="Model pools; one per served model.")

    @model_validator(mode="after")
    def _pools_consistent(self) -> MuseServeConfig:
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        if self.gateway.default_model is not None and self.gateway.default_model not in names:
            raise ValueError(f"gateway.default_model {self.gateway.default_model!r} is not a pool ({', '.join(names)})")
        return self

    @property
    def default_pool(self) -> PoolConfig:
        name = self.gateway.default_model or self.pools[0].name
        return self.pool(name)

    def pool(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)

    def tokenizer_for(self, pool: PoolConfig) -> str | None:
        """A checkpoint's own tokenizer.json, else `preprocess.tokenizer` (None: the bundled one)."""
        if pool.model.load_format == "safetensors" and (Path(pool.model.path) / "tokenizer.json").is_file():
            return str(Path(pool.model.path) / "tokenizer.json")
        return self.preprocess.tokenizer


class ConfigError(ValueError):
    """A configuration that cannot start: every message names the key path at fault."""


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(error: ValidationError) -> list[str]:
    errors = error.errors()
    locs = [e["loc"] for e in errors]
    lines = []
    for err in errors:
        loc = err["loc"]
        # A sequence whose items failed is also reported as too short: say only what failed.
        if err["type"] == "too_short" and any(other[: len(loc)] == loc and len(other) > len(loc) for other in locs):
            continue
        # Checks across sections (names, references) report at the root; their message names the keys.
        path = _key_path(loc)
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {message}" if path else f"  {message}")
    return lines


def parse_config(data: Mapping[str, Any], source: str = "config") -> MuseServeConfig:
    try:
        return MuseServeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source} is not valid:\n" + "\n".join(_problems(e))) from None


def load_config(path: str | Path | None = None) -> MuseServeConfig:
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return parse_config(data, source=str(path))


@dataclass(frozen=True)
class Environment:
    """The only environment variables museserve reads, with the MUSESERVE_ prefix."""

    config_path: str | None = None
    log_level: str = "INFO"


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    environ = os.environ if environ is None else environ
    return Environment(
        config_path=environ.get("MUSESERVE_CONFIG") or None,
        log_level=environ.get("MUSESERVE_LOG_LEVEL", "INFO").upper(),
    )
