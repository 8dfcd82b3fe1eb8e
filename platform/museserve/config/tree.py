"""The root of the configuration tree, and reading it from YAML and the environment.

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
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from museserve.config.base import Section, ServerConfig
from museserve.config.gateway import GatewayConfig
from museserve.config.pool import PoolConfig
from museserve.config.preprocess import PreprocessConfig

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[3] / "deploy" / "local" / "museserve.yaml"


class MuseServeConfig(Section):
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
        served = ", ".join(names)
        if self.gateway.default_model is not None and self.gateway.default_model not in names:
            raise ValueError(f"gateway.default_model {self.gateway.default_model!r} is not a pool ({served})")
        for mode, pool in self.gateway.routes.items():
            if pool not in names:
                raise ValueError(f"gateway.routes.{mode} {pool!r} is not a pool ({served})")
            if mode not in self.pool(pool).modes:
                raise ValueError(f"gateway.routes.{mode}: pool {pool!r} does not serve mode {mode}")
        for i, pool in enumerate(self.pools):
            for kind, split in (("ab", pool.ab), ("mirror", pool.mirror)):
                if split is None:
                    continue
                if split.candidate not in names:
                    raise ValueError(f"pools[{i}].{kind}.candidate {split.candidate!r} is not a pool ({served})")
                if split.candidate == pool.name:
                    raise ValueError(f"pools[{i}].{kind}.candidate must be another pool than {pool.name!r}")
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
