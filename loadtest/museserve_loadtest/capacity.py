"""What serving N users costs: replicas, GPUs, nodes, Ray cells, gateways, Redis shards.

Pure arithmetic over frozen assumptions; `capacity_report` parses flags and formats.

Cost model. A request's cost is counted in decode-token equivalents:
    cost = decode_tokens + prefill_weight * prefill_tokens
    decode_tokens: instant O; thinking R + O; contemplating N * (R + A) + S + O
    prefill_tokens: P (text + media tokens); contemplating P + N * A (the synthesis reads
    the agents' answers; the agents share the prompt's KV blocks through the prefix cache)
with O output, R reasoning, A agent answer, S synthesis reasoning tokens, N agents.
A measured replica served G requests/s at the SLO, each costing C_m on average, so its
budget is K = G * C_m cost units/s. A pool needing r requests/s of cost c takes
r * c / K replica-equivalents, and ceil(that / target_utilisation) replicas. This
assumes decode tokens dominate and a replica's tokens/s at the SLO does not depend on how
they split between requests (so it is exact for the measured mix and a scaling beyond it).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .capacity_assumptions import MODES, Assumptions, Measured, Workload

__all__ = ["Assumptions", "Capacity", "Measured", "PoolCapacity", "Workload", "plan", "safe_ceil"]
SECONDS_PER_DAY = 86_400


def safe_ceil(x: float) -> int:
    """ceil(x), forgiving float error of 1e-9 relative (171875.00000000003 -> 171875)."""
    return math.ceil(x - 1e-9 * max(1.0, abs(x)))


@dataclass(frozen=True)
class PoolCapacity:
    """One pool class (a mode's pool, or the mirror candidate) at the diurnal peak."""

    pool: str
    peak_requests_per_s: float
    decode_tokens_per_request: float
    prefill_tokens_per_request: float
    cost_per_request: float  # decode-token equivalents
    replica_equivalents: float  # r * c / K: replicas fully busy at the SLO
    replicas: int  # ceil(replica_equivalents / target_utilisation)


@dataclass(frozen=True)
class Capacity:
    """Requests and tokens per second, then what serves them. Nodes and cells count the model
    pools' GPU nodes only; gateway, preprocess and Redis hosts are CPU capacity beside them."""

    average_requests_per_s: float
    peak_requests_per_s: float
    average_input_tokens_per_s: float
    peak_input_tokens_per_s: float
    average_decode_tokens_per_s: float
    peak_decode_tokens_per_s: float
    replica_budget_cost_per_s: float  # K = G * C_m
    pools: list[PoolCapacity] = field(default_factory=list)
    replicas: int = 0
    gpus: int = 0
    nodes: int = 0
    nodes_per_cell: int = 0
    cells: int = 0
    gateway_replicas: int = 0
    redis_ops_per_s: float = 0.0
    redis_shards: int = 0
    redis_nodes: int = 0
    media_preprocess_cpu_s_per_s: float = 0.0
    preprocess_replicas: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def average_requests_per_s(a: Assumptions) -> float:
    """users * daily_active_fraction * requests_per_active_user_per_day / 86,400."""
    t = a.traffic
    return t.users * t.daily_active_fraction * t.requests_per_active_user_per_day / SECONDS_PER_DAY


def prompt_tokens(w: Workload) -> float:
    """P = prompt_tokens + image_share * image_tokens + audio_share * audio_tokens (one item each)."""
    return (
        w.prompt_tokens
        + w.modality_mix.get("image", 0.0) * w.image_tokens
        + w.modality_mix.get("audio", 0.0) * w.audio_tokens
    )


def decode_tokens(w: Workload, mode: str) -> float:
    """instant: O; thinking: R + O; contemplating: N * (R + A) + S + O."""
    if mode == "instant":
        return w.output_tokens
    if mode == "thinking":
        return w.reasoning_tokens + w.output_tokens
    agents = w.contemplating_agents
    return agents * (w.reasoning_tokens + w.agent_answer_tokens) + w.synthesis_reasoning_tokens + w.output_tokens


def prefill_tokens(w: Workload, mode: str) -> float:
    """P, and for contemplating P + N * A (the synthesis prompt adds the agents' answers)."""
    extra = w.contemplating_agents * w.agent_answer_tokens if mode == "contemplating" else 0
    return prompt_tokens(w) + extra


def cost_per_request(w: Workload, mode: str) -> float:
    """decode_tokens + prefill_weight * prefill_tokens, in decode-token equivalents."""
    return decode_tokens(w, mode) + w.prefill_weight * prefill_tokens(w, mode)


def replica_budget(m: Measured, w: Workload) -> float:
    """K = G * C_m with C_m = D_m + prefill_weight * P_m, D_m = tokens_per_s / G."""
    measured_cost = m.tokens_per_s_per_replica / m.goodput_rps_per_replica + w.prefill_weight * m.measured_prompt_tokens
    return m.goodput_rps_per_replica * measured_cost


def nodes_for(replicas: int, a: Assumptions) -> int:
    """Replicas that fit a node share it (gpn // gpr per node); larger ones take ceil(gpr / gpn) nodes each."""
    gpr, gpn = a.fleet.gpus_per_replica, a.fleet.gpus_per_node
    if gpr <= gpn:
        return safe_ceil(replicas / (gpn // gpr))
    return replicas * math.ceil(gpr / gpn)


def nodes_per_cell(a: Assumptions) -> int:
    """min(max_nodes_per_cell, max_gpus_per_cell // gpn), rounded down to whole multi-node replicas."""
    f = a.fleet
    nodes = f.max_nodes_per_cell
    if f.max_gpus_per_cell:
        nodes = min(nodes, f.max_gpus_per_cell // f.gpus_per_node)
    per_replica = max(1, math.ceil(f.gpus_per_replica / f.gpus_per_node))
    return nodes // per_replica * per_replica


def plan(a: Assumptions) -> Capacity:
    """Every output at the diurnal peak (peak = average * peak_to_average), headroom applied to each tier."""
    a.validate()
    w, u = a.workload, a.fleet.target_utilisation
    avg = average_requests_per_s(a)
    peak = avg * a.traffic.peak_to_average
    budget = replica_budget(a.measured, w)
    pools: list[PoolCapacity] = []
    for mode in MODES:
        share = w.mode_mix.get(mode, 0.0)
        if share == 0:
            continue
        rps = peak * share
        equivalents = rps * cost_per_request(w, mode) / budget
        pools.append(
            PoolCapacity(
                mode,
                rps,
                decode_tokens(w, mode),
                prefill_tokens(w, mode),
                cost_per_request(w, mode),
                equivalents,
                safe_ceil(equivalents / u),
            )
        )
    decode_per_request = sum(p.peak_requests_per_s * p.decode_tokens_per_request for p in pools) / peak
    prefill_per_request = sum(p.peak_requests_per_s * p.prefill_tokens_per_request for p in pools) / peak
    s = a.services
    if s.mirror_fraction > 0:
        # The candidate pool serves a sampled copy of the same mix.
        mix_equivalents = sum(p.replica_equivalents for p in pools)
        mean_cost = mix_equivalents * budget / peak
        eq = s.mirror_fraction * mix_equivalents
        pools.append(
            PoolCapacity(
                "mirror",
                peak * s.mirror_fraction,
                decode_per_request,
                prefill_per_request,
                mean_cost,
                eq,
                safe_ceil(eq / u),
            )
        )
    replicas = sum(p.replicas for p in pools)
    nodes = sum(nodes_for(p.replicas, a) for p in pools)
    cell_nodes = nodes_per_cell(a)
    redis_ops = peak * (s.redis_decisions_per_request + s.mirror_fraction * s.redis_xadds_per_mirrored_request)
    redis_shards = safe_ceil(redis_ops / (s.redis_ops_per_s_per_shard * u))
    media_cpu = peak * (
        w.modality_mix.get("image", 0.0) * s.image_preprocess_ms
        + w.modality_mix.get("audio", 0.0) * s.audio_preprocess_ms
    )
    media_cpu /= 1000.0
    return Capacity(
        average_requests_per_s=avg,
        peak_requests_per_s=peak,
        average_input_tokens_per_s=avg * prompt_tokens(w),
        peak_input_tokens_per_s=peak * prompt_tokens(w),
        average_decode_tokens_per_s=avg * decode_per_request,
        peak_decode_tokens_per_s=peak * decode_per_request,
        replica_budget_cost_per_s=budget,
        pools=pools,
        replicas=replicas,
        gpus=replicas * a.fleet.gpus_per_replica,
        nodes=nodes,
        nodes_per_cell=cell_nodes,
        cells=safe_ceil(nodes / cell_nodes),
        gateway_replicas=safe_ceil(peak / (s.gateway_rps_per_replica * u)),
        redis_ops_per_s=redis_ops,
        redis_shards=redis_shards,
        redis_nodes=redis_shards * s.redis_replication_factor,
        media_preprocess_cpu_s_per_s=media_cpu,
        preprocess_replicas=safe_ceil(media_cpu / u),
    )
