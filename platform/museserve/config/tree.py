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
from museserve.config.gateway import GatewayConfig, split_adapter_entry
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
            modes = self.pool(pool).modes
            if modes is not None and mode not in modes:  # unset: checked against the checkpoint at start
                raise ValueError(f"gateway.routes.{mode}: pool {pool!r} does not serve mode {mode}")
        for i, pool in enumerate(self.pools):
            for kind, split in (("ab", pool.ab), ("mirror", pool.mirror)):
                if split is None:
                    continue
                if split.candidate not in names:
                    raise ValueError(f"pools[{i}].{kind}.candidate {split.candidate!r} is not a pool ({served})")
                if split.candidate == pool.name:
                    raise ValueError(f"pools[{i}].{kind}.candidate must be another pool than {pool.name!r}")
        self._check_adapter_entries()
        return self

    def _check_adapter_entries(self) -> None:
        """Each POOL:ADAPTER of the tiers and tenants names a pool that serves adapters, and an
        adapter its config lists where it has no store (a store's adapters may come later)."""
        scopes = [(f"gateway.tiers.{name}", tier) for name, tier in self.gateway.tiers.items()]
        scopes += [(f"gateway.tenants.{name}", tenant) for name, tenant in self.gateway.tenants.items()]
        for where, scope in scopes:
            entries = [(f"{where}.adapters[{i}]", entry) for i, entry in enumerate(scope.adapters or ())]
            if scope.default_adapter is not None:
                entries.append((f"{where}.default_adapter", scope.default_adapter))
            for key, entry in entries:
                self._check_adapter_entry(key, entry)

    def _check_adapter_entry(self, key: str, entry: str) -> None:
        pool_name, adapter = split_adapter_entry(entry)
        pool = next((p for p in self.pools if p.name == pool_name), None)
        if pool is None:
            served = ", ".join(p.name for p in self.pools)
            raise ValueError(f"{key} {entry!r}: {pool_name!r} is not a pool ({served})")
        lora = pool.lora
        if not lora.enabled:
            raise ValueError(f"{key} {entry!r}: pool {pool_name!r} serves no adapters (its lora section is empty)")
        if lora.directory is None and adapter not in {source.name for source in lora.adapters}:
            listed = ", ".join(source.name for source in lora.adapters)
            raise ValueError(f"{key} {entry!r}: pool {pool_name!r} has no adapter {adapter!r} (listed: {listed})")

    @property
    def default_pool(self) -> PoolConfig:
        name = self.gateway.default_model or self.pools[0].name
        return self.pool(name)

    def pool(self, name: str) -> PoolConfig:
        return next(p for p in self.pools if p.name == name)


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


def load_config(path: str | Path | None = None, env: Environment | None = None) -> MuseServeConfig:
    """Reads the YAML file; `env` (see `Environment`) adds what a deployment keeps in secrets:
    the Redis URL and a file of API key hashes."""
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
    if env is not None:
        data = _with_environment(data, env)
    return parse_config(data, source=str(path))


def _with_environment(data: dict[str, Any], env: Environment) -> dict[str, Any]:
    """The file's tree with `env.redis_url` as gateway.redis.url and the keys of
    `env.api_keys_file` appended to gateway.api_keys (the file is left as it is)."""
    if env.redis_url is None and env.api_keys_file is None:
        return data
    gateway = dict(data.get("gateway") or {})
    if env.redis_url is not None:
        gateway["redis"] = {**(gateway.get("redis") or {}), "url": env.redis_url}
    if env.api_keys_file is not None:
        keys_path = Path(env.api_keys_file)
        try:
            keys = yaml.safe_load(keys_path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read API keys file {keys_path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{keys_path} is not valid YAML: {e}") from None
        if not isinstance(keys, list):
            raise ConfigError(f"{keys_path} must hold a list of API keys (sha256, tenant, tier)")
        gateway["api_keys"] = [*(gateway.get("api_keys") or []), *keys]
    return {**data, "gateway": gateway}


@dataclass(frozen=True)
class Environment:
    """The only environment variables museserve reads, with the MUSESERVE_ prefix."""

    config_path: str | None = None
    log_level: str = "INFO"
    # Kept out of the config file, which lives in a ConfigMap: both come from Kubernetes Secrets.
    redis_url: str | None = None  # MUSESERVE_REDIS_URL: replaces gateway.redis.url
    api_keys_file: str | None = None  # MUSESERVE_API_KEYS_FILE: YAML list of gateway.api_keys entries, appended


def read_environment(environ: Mapping[str, str] | None = None) -> Environment:
    environ = os.environ if environ is None else environ
    return Environment(
        config_path=environ.get("MUSESERVE_CONFIG") or None,
        log_level=environ.get("MUSESERVE_LOG_LEVEL", "INFO").upper(),
        redis_url=environ.get("MUSESERVE_REDIS_URL") or None,
        api_keys_file=environ.get("MUSESERVE_API_KEYS_FILE") or None,
    )
