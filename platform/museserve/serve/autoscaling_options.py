"""Serve deployment options for a tier that autoscales (`DeploymentConfig.autoscaling`)."""

from __future__ import annotations

import warnings
from typing import Literal

from ray.serve.config import AutoscalingConfig, AutoscalingPolicy

from museserve.config import MuseServeConfig
from museserve.config.base import AutoscalingPolicyConfig

Tier = Literal["pool", "gateway", "preprocess"]

POLICY = "museserve.serve.autoscaling_policies:TierPolicy"

_RULES = ("min_replicas", "max_replicas", "upscale_delay_s", "downscale_delay_s", "cooldown_s", "downscale_below")
_TARGETS = {
    "pool": ("kv_usage_target", "waiting_per_replica"),
    "gateway": ("in_flight_per_replica",),
    "preprocess": ("ongoing_per_replica", "cpu_per_replica"),
}


def serve_autoscaling_config(
    a: AutoscalingPolicyConfig, tier: Tier, num_replicas: int, ttft_objective_s: float | None = None
) -> AutoscalingConfig:
    """`num_replicas`: how many start, within the bounds."""
    targets = {name: getattr(a, name) for name in _TARGETS[tier]}
    if tier == "pool":
        if ttft_objective_s is None:
            raise ValueError("a pool's policy needs its TTFT objective")
        targets["ttft_objective_s"] = ttft_objective_s
    policy = AutoscalingPolicy(
        policy_function=POLICY,
        policy_kwargs={"tier": tier, "rules": {name: getattr(a, name) for name in _RULES}, "targets": targets},
    )
    with warnings.catch_warnings():
        # metrics_interval_s is marked deprecated (for environment variables Ray 2.60 does not
        # read yet), but it is what paces the replicas' and handles' reports in this version.
        warnings.simplefilter("ignore", DeprecationWarning)
        return AutoscalingConfig(
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            initial_replicas=min(a.max_replicas, max(a.min_replicas, num_replicas)),
            metrics_interval_s=a.metrics_push_interval_s,
            look_back_period_s=a.look_back_s,
            # The policy keeps the delays and the cool-down; Serve's would add to them.
            upscale_delay_s=0.0,
            downscale_delay_s=0.0,
            downscale_to_zero_delay_s=0.0,
            policy=policy,
        )


def candidate_pools(config: MuseServeConfig) -> set[str]:
    """Pools that are the candidate of an A/B split or of a mirror."""
    names = set()
    for pool in config.pools:
        if pool.ab is not None:
            names.add(pool.ab.candidate)
        if pool.mirror is not None:
            names.add(pool.mirror.candidate)
    return names


def check_scale_to_zero(config: MuseServeConfig) -> None:
    """Only a candidate pool may scale to 0: its primary answers while it sleeps. A gateway,
    the preprocess tier or a primary pool at 0 would hold every request until one starts."""
    candidates = candidate_pools(config)
    tiers = [("gateway", config.gateway.deployment), ("preprocess", config.preprocess.deployment)]
    tiers += [(f"pools[{p.name}]", p.deployment) for p in config.pools if p.name not in candidates]
    for where, deployment in tiers:
        if deployment.autoscaling is not None and deployment.autoscaling.min_replicas == 0:
            raise ValueError(
                f"{where}.deployment.autoscaling.min_replicas: 0 is only for a pool that is an A/B or mirror candidate"
            )
