"""Autoscaling wiring without a cluster: config sections, Serve options, the policy as Serve
loads it, and the mirror that must not wake a candidate scaled to zero."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import ValidationError

from museserve.config import parse_config
from museserve.config.base import AutoscalingPolicyConfig
from museserve.gateway.gateway import Gateway
from museserve.gateway.mirror import Mirror
from museserve.gateway.mirror_sinks import JsonlMirrorSink
from museserve.gateway.observer import CountingObserver
from museserve.gateway.pool_loads import PoolLoads
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.messages import ReplicaLoad
from museserve.serve.app import _options, pool_options, replica_view
from museserve.serve.autoscaling_options import check_scale_to_zero, serve_autoscaling_config
from tests.support import text_preprocess
from tests.unit.test_gateway_tier import ScriptedPool, mirrored, request

SCALING = {"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_s": 4}


def config_with(main_scaling: dict | None = None, shadow_scaling: dict | None = None):
    def pool(name: str, scaling: dict | None, **extra) -> dict:
        return {"name": name, "deployment": {"autoscaling": scaling}} | extra

    mirror = {"candidate": "shadow", "fraction": 1.0}
    return parse_config({"pools": [pool("main", main_scaling, mirror=mirror), pool("shadow", shadow_scaling)]})


def test_off_by_default_keeps_a_fixed_replica_count() -> None:
    config = parse_config({"pools": [{"name": "main"}]})
    assert all(d.autoscaling is None for d in (config.gateway.deployment, config.preprocess.deployment))
    options = pool_options(config.pools[0], config.server)
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options


def test_section_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="below min_replicas"):
        AutoscalingPolicyConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="look_back_s"):
        AutoscalingPolicyConfig(look_back_s=1, metrics_push_interval_s=2)


def test_pool_options_carry_the_policy_its_ttft_objective_and_the_drain() -> None:
    config = config_with(SCALING)
    options = pool_options(config.pools[0], config.server)
    assert "num_replicas" not in options
    auto = options["autoscaling_config"]
    assert (auto.min_replicas, auto.max_replicas, auto.initial_replicas) == (1, 3, 1)
    assert (auto.upscale_delay_s, auto.downscale_delay_s, auto.look_back_period_s) == (0.0, 0.0, 4.0)
    kwargs = auto.policy.policy_kwargs
    assert kwargs["tier"] == "pool" and kwargs["targets"]["ttft_objective_s"] == 2.0
    assert kwargs["rules"]["upscale_delay_s"] == 1 and kwargs["rules"]["downscale_delay_s"] == 3
    assert auto.metrics_interval_s == 2.0  # what paces the replicas' reports in Ray 2.60
    # A stopping replica (a scale-down too) lets what it holds finish: the drain timeout, plus a margin.
    assert options["graceful_shutdown_timeout_s"] > config.server.drain_timeout_s
    # Retuning the policy does not change what the replicas are given.
    assert replica_view(config.pools[0]).deployment.autoscaling is None


def test_policy_loads_as_serve_loads_it() -> None:
    auto = serve_autoscaling_config(AutoscalingPolicyConfig(), "gateway", num_replicas=2)
    policy_class = auto.policy.get_policy()  # cloudpickled by value, as Serve's controller gets it
    policy = policy_class(**auto.policy.policy_kwargs)
    assert isinstance(policy, policy_class) and policy.tier == "gateway"
    assert policy.targets == {"in_flight_per_replica": 256.0}
    assert auto.initial_replicas == 2


def test_gateway_and_preprocess_options() -> None:
    config = parse_config(
        {
            "pools": [{"name": "main"}],
            "gateway": {"deployment": {"autoscaling": SCALING}},
            "preprocess": {"deployment": {"autoscaling": SCALING}},
        }  # fmt: skip
    )
    gateway = _options("gateway", config.gateway.deployment, config.server, "gateway")
    assert gateway["autoscaling_config"].policy.policy_kwargs["tier"] == "gateway"
    preprocess = _options("preprocess", config.preprocess.deployment, config.server, "preprocess")
    assert set(preprocess["autoscaling_config"].policy.policy_kwargs["targets"]) == {
        "ongoing_per_replica",
        "cpu_per_replica",
    }


def test_only_a_candidate_pool_may_scale_to_zero() -> None:
    check_scale_to_zero(config_with(SCALING, SCALING | {"min_replicas": 0}))
    with pytest.raises(ValueError, match=r"pools\[main\].deployment.autoscaling.min_replicas"):
        check_scale_to_zero(config_with(SCALING | {"min_replicas": 0}))


def mirrored_gateway(tmp_path: Path, candidate_loads: dict) -> tuple[Gateway, CountingObserver, ScriptedPool]:
    """A gateway mirroring every request to `shadow`, whose replicas' reports are `candidate_loads`
    (the primary's replica reports, as in a Serve replica whose routers publish)."""
    config = mirrored()
    loads = PoolLoads()
    loads.publish("main", {"r1": ReplicaLoad(running=1)})
    loads.publish("shadow", candidate_loads)
    shadow = ScriptedPool(tokens=3)
    pools = {"main": ScriptedPool(tokens=5), "shadow": shadow}
    observer = CountingObserver()
    mirror = Mirror(text_preprocess(config), pools, JsonlMirrorSink(tmp_path / "m.jsonl"), observer, loads=loads)
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    return (
        Gateway(config, text_preprocess(config), pools, quota=quota, mirror=mirror, observer=observer),
        observer,
        shadow,
    )


async def test_mirror_skips_a_candidate_scaled_to_zero(tmp_path: Path) -> None:
    gateway, observer, shadow = mirrored_gateway(tmp_path, {})  # the candidate's router sees no replica
    result = await gateway.chat(request("r1"))
    assert result.text.startswith("t0 ")  # the primary answers regardless
    await asyncio.wait_for(gateway.mirror.close(), 5)
    assert shadow.calls == [] and observer.mirrors["skipped_scaled_to_zero"] == 1


async def test_mirror_sends_to_an_awake_candidate(tmp_path: Path) -> None:
    gateway, observer, shadow = mirrored_gateway(tmp_path, {"r2": ReplicaLoad()})
    await gateway.chat(request("r1"))
    await asyncio.wait_for(gateway.mirror.close(), 5)
    assert len(shadow.calls) == 1 and observer.mirrors["recorded"] == 1
