"""The Serve application builder that Serve config files name, and the environment that adds
Kubernetes Secrets to the config (Redis URL, API key hashes)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

from museserve.config import DEFAULT_CONFIG_PATH, ConfigError, Environment, load_config, read_environment
from museserve.serve.entrypoint import app_builder, wait_for_digest

KEY = {"sha256": "cd" * 32, "tenant": "acme", "tier": "default"}


def test_builder_takes_args_as_serve_passes_them() -> None:
    app = call_user_app_builder_with_args_if_necessary(app_builder, {"config": str(DEFAULT_CONFIG_PATH)})
    assert isinstance(app, Application)


def test_builder_refuses_unknown_args() -> None:
    with pytest.raises(ValueError, match="confg"):
        call_user_app_builder_with_args_if_necessary(app_builder, {"confg": "x.yaml"})


def test_builder_waits_for_the_named_digest(tmp_path: Path) -> None:
    path = tmp_path / "museserve.yaml"
    path.write_text(DEFAULT_CONFIG_PATH.read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    wait_for_digest(path, digest, timeout_s=1)  # already there: returns at once
    with pytest.raises(ConfigError, match="was not updated"):
        wait_for_digest(path, "0" * 64, timeout_s=0.05, poll_s=0.01)


def test_stale_file_stops_the_build(tmp_path: Path) -> None:
    path = tmp_path / "museserve.yaml"
    path.write_text(DEFAULT_CONFIG_PATH.read_text())
    args = {"config": str(path), "config_sha256": "0" * 64, "config_wait_s": 0.01}
    with pytest.raises(ConfigError, match="expects 0000"):
        call_user_app_builder_with_args_if_necessary(app_builder, args)


def test_environment_adds_redis_url_and_key_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([KEY]))
    env = read_environment({"MUSESERVE_REDIS_URL": "redis://r:6379/0", "MUSESERVE_API_KEYS_FILE": str(keys)})
    config = load_config(DEFAULT_CONFIG_PATH, env)
    assert config.gateway.redis.url == "redis://r:6379/0"
    assert [k.tenant for k in config.gateway.api_keys] == ["acme"]


def test_key_file_errors_name_the_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("sha256: x\n")
    with pytest.raises(ConfigError, match="keys.yaml must hold a list"):
        load_config(DEFAULT_CONFIG_PATH, Environment(api_keys_file=str(keys)))
    keys.write_text(yaml.safe_dump([{**KEY, "sha256": "not-a-digest"}]))
    with pytest.raises(ConfigError, match=r"gateway\.api_keys\[0\]\.sha256"):
        load_config(DEFAULT_CONFIG_PATH, Environment(api_keys_file=str(keys)))
    with pytest.raises(ConfigError, match="cannot read API keys file"):
        load_config(DEFAULT_CONFIG_PATH, Environment(api_keys_file=str(tmp_path / "missing.yaml")))


def test_empty_environment_changes_nothing() -> None:
    assert load_config(DEFAULT_CONFIG_PATH, read_environment({})) == load_config(DEFAULT_CONFIG_PATH)
