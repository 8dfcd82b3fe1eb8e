"""Ray Serve custom autoscaling policies, one per tier, on the signals each tier lives by.

Serve's controller builds one `TierPolicy` per deployment from `policy_kwargs` (JSON) and calls
it every control tick with an `AutoscalingContext`; the decision itself is
`autoscaling_decision.decide`, on plain values. Signals:
- pools: KV use, requests waiting, TTFT p90 (custom metrics of `ModelPoolDeployment`);
- gateways: requests in flight from both ports (`GatewayIngress`; the direct gRPC port
  bypasses Serve's own request counts);
- preprocess: ongoing requests (Serve's count) and CPU (`PreprocessDeployment`).

Serve itself still applies min/max, and wakes a deployment at 0 replicas when a request is
queued at one of its handles; its own delays are set to 0 (`serve_autoscaling_config`), as
this policy keeps the delays and the cool-down.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from statistics import fmean
from typing import Any

from museserve.serve.autoscaling_decision import Decision, Pressure, ScaleRules, ScaleState, decide
from museserve.serve.autoscaling_stats import CPU, IN_FLIGHT, KV_USAGE, TTFT_P90_S, WAITING

# The controller's own logger: decisions land in its log beside Serve's scaling lines.
logger = logging.getLogger("ray.serve")

Signals = dict[str, tuple[float, float]]  # name -> (value, target)


def _mean(metrics: Mapping[str, list[float]], key: str) -> float | None:
    values = metrics.get(key)
    return fmean(values) if values else None


def pool_signals(metrics: Mapping[str, list[float]], targets: Mapping[str, float]) -> Signals:
    """`metrics`: each custom metric's per-replica values (averaged over the look-back)."""
    wanted = {
        "kv_usage": (KV_USAGE, targets["kv_usage_target"]),
        "waiting": (WAITING, targets["waiting_per_replica"]),
        "ttft_p90": (TTFT_P90_S, targets["ttft_objective_s"]),
    }
    signals = {}
    for name, (key, target) in wanted.items():
        value = _mean(metrics, key)
        if value is not None:
            signals[name] = (value, target)
    return signals


def gateway_signals(metrics: Mapping[str, list[float]], targets: Mapping[str, float]) -> Signals:
    in_flight = _mean(metrics, IN_FLIGHT)
    return {} if in_flight is None else {"in_flight": (in_flight, targets["in_flight_per_replica"])}


def preprocess_signals(
    metrics: Mapping[str, list[float]], targets: Mapping[str, float], ongoing: float, running: int
) -> Signals:
    """`ongoing`: Serve's count of requests running or queued for the tier, all replicas."""
    signals = {}
    if running > 0:
        signals["ongoing"] = (ongoing / running, targets["ongoing_per_replica"])
    cpu = _mean(metrics, CPU)
    if cpu is not None:
        signals["cpu"] = (cpu, targets["cpu_per_replica"])
    return signals


def tier_signals(
    tier: str, metrics: Mapping[str, list[float]], targets: Mapping[str, float], ongoing: float, running: int
) -> Signals:
    if tier == "pool":
        return pool_signals(metrics, targets)
    if tier == "gateway":
        return gateway_signals(metrics, targets)
    return preprocess_signals(metrics, targets, ongoing, running)


def _latest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


class TierPolicy:
    """`tier`: pool, gateway or preprocess; `rules`: `ScaleRules` fields; `targets`: the
    tier's targets (`AutoscalingPolicyConfig`, plus `ttft_objective_s` for a pool)."""

    def __init__(self, tier: str, rules: dict[str, Any], targets: dict[str, float]):
        if tier not in ("pool", "gateway", "preprocess"):
            raise ValueError(f"unknown tier {tier!r}")
        self.tier = tier
        self.rules = ScaleRules(**rules)
        self.targets = dict(targets)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """`ctx`: Serve's `AutoscalingContext`."""
        metrics = {name: list(by_replica.values()) for name, by_replica in (ctx.aggregated_metrics or {}).items()}
        ongoing = float(ctx.total_num_requests or 0.0)
        signals = tier_signals(self.tier, metrics, self.targets, ongoing, ctx.current_num_replicas)
        state = ScaleState.from_dict(ctx.policy_state or {})
        # Serve also records the changes it applied (a deploy, a bound): those start a cool-down too.
        state = ScaleState(state.over_since, state.under_since,
                           _latest(state.last_change, ctx.last_scale_up_time, ctx.last_scale_down_time))  # fmt: skip
        decision = decide(
            self.rules,
            state,
            now=ctx.current_time,
            target=ctx.target_num_replicas,
            running=ctx.current_num_replicas,
            pressure=Pressure.of(signals),
            ongoing=ongoing,
        )
        if decision.changed:
            _log(ctx.deployment_name, ctx.target_num_replicas, decision, signals)
        return decision.replicas, decision.state.as_dict()


def _log(deployment: str, before: int, decision: Decision, signals: Signals) -> None:
    shown = ", ".join(f"{name} {value:.3g}/{target:.3g}" for name, (value, target) in sorted(signals.items()))
    logger.info(
        "museserve autoscaling %s: %d -> %d replicas (%s; %s)",
        deployment,
        before,
        decision.replicas,
        decision.reason,
        shown or "no signals",
    )
