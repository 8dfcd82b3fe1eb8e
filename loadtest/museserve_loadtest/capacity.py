"""What serving N users costs, from figures each measured or assumed (`capacity_figures`).

The model, per replica:
- Memory: KV bytes = usable GPU memory of the replica - weights; it holds
  kv_sequences = KV bytes / (KV bytes per token x mean context of the mix) sequences at once.
- Compute: at the decode rate D (tokens/s) with step time t, a replica runs D x t sequences
  per step. When fewer fit its KV cache, KV bounds it and decode runs at D x kv_sequences /
  (D x t) (fewer sequences per step; each step is no slower, so this errs low); else compute
  bounds it at D.
- A request takes prefill / prefill rate + decode / decode rate of one replica's time; prefill
  and decode are counted as not overlapping (chunked prefill overlaps them: this errs high).
  The prefix hit rate removes its share of prompt tokens from prefill.
Per request, by mode (P prompt, O output, R reasoning, A agent answer, N agents, h hit rate):
  instant: prefill P(1-h), decode O; thinking: prefill P(1-h), decode R + O;
  contemplating: prefill N P(1-h) x agents_prefill_ratio + N A, decode N (R + A) + S + O
  (S the synthesis pass's reasoning).
Every tier is sized at target_utilisation; each cell has its own gateways and Redis Cluster,
and traffic splits evenly over cells (tenants hashed onto a ring: docs/cells.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .capacity_figures import Figures
from .capacity_layout import ReplicaMemory, architecture, replica_memory

MODES = ("instant", "thinking", "contemplating")
SECONDS_PER_DAY = 86_400


def safe_ceil(x: float) -> int:
    """ceil(x), forgiving float error of 1e-9 relative (171875.00000000003 -> 171875)."""
    return math.ceil(x - 1e-9 * max(1.0, abs(x)))


@dataclass(frozen=True)
class Replica:
    memory: ReplicaMemory
    compute_sequences: float  # D x t: sequences per decode step at the measured or assumed rate
    bound: str  # "KV" or "compute"
    decode_tokens_per_s: float  # after the KV bound
    prefill_tokens_per_s: float


@dataclass(frozen=True)
class Pool:
    pool: str
    peak_requests_per_s: float
    prefill_tokens_per_request: float  # after prefix hits
    decode_tokens_per_request: float
    replica_s_per_request: float
    prefill_share: float  # of the replica time a request takes
    replicas: int
    gpus: int


@dataclass(frozen=True)
class CapacityPlan:
    average_requests_per_s: float
    peak_requests_per_s: float
    replica: Replica
    pools: tuple[Pool, ...]
    replicas: int
    gpus: int
    replicas_per_cell: int
    cells: int
    gateway_replicas_per_cell: int
    gateway_replicas: int
    redis_ops_per_s: float
    redis_keys_per_s: float
    redis_shards_per_cell: int
    redis_shards: int
    redis_nodes: int
    mirror_records_per_s: float
    mirror_bytes_per_s: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _share(value: float, name: str) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"{name}: a share, must be in [0, 1], got {value}")
    return value


def _positive(value: float, name: str) -> float:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number > 0, got {value}")
    return value


def replica(f: Figures) -> Replica:
    arch = architecture(str(f.get("model_size")), int(f.number("vocab_size")))
    memory = replica_memory(
        arch,
        int(f.number("tensor_parallel")),
        int(f.number("pipeline_parallel")),
        _positive(f.number("gpu_memory_gib"), "gpu_memory_gib"),
        _share(f.number("gpu_memory_utilisation"), "gpu_memory_utilisation"),
        _positive(f.number("weight_bytes_per_parameter"), "weight_bytes_per_parameter"),
        int(f.number("kv_element_bytes")),
        f.mix("context_mix"),
    )
    decode = _positive(f.number("decode_tokens_per_s_per_replica"), "decode_tokens_per_s_per_replica")
    batch = decode * _positive(f.number("decode_step_s"), "decode_step_s")
    prefill = _positive(f.number("prefill_tokens_per_s_per_replica"), "prefill_tokens_per_s_per_replica")
    if memory.kv_sequences < batch:
        return Replica(memory, batch, "KV", decode * memory.kv_sequences / batch, prefill)
    return Replica(memory, batch, "compute", decode, prefill)


def _tokens(f: Figures, mode: str) -> tuple[float, float]:
    """(prefill after prefix hits, decode) tokens of one request of `mode`."""
    prompt = f.number("prompt_tokens") * (1 - _share(f.number("prefix_hit_rate"), "prefix_hit_rate"))
    output = _positive(f.number("output_tokens"), "output_tokens")
    if mode == "instant":
        return prompt, output
    reasoning = f.number("reasoning_tokens")
    if mode == "thinking":
        return prompt, reasoning + output
    agents, answer = f.number("contemplating_agents"), f.number("agent_answer_tokens")
    shared = _share(f.number("agents_prefill_ratio"), "agents_prefill_ratio")
    synthesis = f.number("synthesis_reasoning_tokens")
    return agents * prompt * shared + agents * answer, agents * (reasoning + answer) + synthesis + output


def plan(f: Figures) -> CapacityPlan:
    """Every output at the diurnal peak; a figure missing or out of range is a ValueError naming it."""
    active = _positive(f.number("users"), "users") * _share(f.number("daily_active_fraction"), "daily_active_fraction")
    per_user = _positive(f.number("requests_per_active_user_per_day"), "requests_per_active_user_per_day")
    average = _positive(active * per_user / SECONDS_PER_DAY, "daily_active_fraction x users (requests/s)")
    peak = average * _positive(f.number("peak_to_average"), "peak_to_average")
    util = _share(f.number("target_utilisation"), "target_utilisation")
    _positive(util, "target_utilisation")
    mix = f.mix("mode_mix")
    unknown = sorted(set(mix) - set(MODES))
    if unknown or any(v < 0 for v in mix.values()) or abs(sum(mix.values()) - 1) > 1e-6:
        raise ValueError(f"mode_mix: shares of {', '.join(MODES)} summing to 1, got {dict(mix)}")
    r = replica(f)
    gpr = r.memory.gpus
    pools, busy = [], 0.0
    for mode in MODES:
        if not mix.get(mode):
            continue
        rps = peak * mix[mode]
        prefill, decode = _tokens(f, mode)
        seconds = prefill / r.prefill_tokens_per_s + decode / r.decode_tokens_per_s
        busy += rps * seconds
        n = safe_ceil(rps * seconds / util)
        pools.append(Pool(mode, rps, prefill, decode, seconds, prefill / r.prefill_tokens_per_s / seconds, n, n * gpr))
    mirror = _share(f.number("mirror_fraction"), "mirror_fraction")
    if mirror:
        # The candidate pool serves a sampled copy of the same mix.
        n = safe_ceil(mirror * busy / util)
        pf = sum(p.peak_requests_per_s * p.prefill_tokens_per_request for p in pools) / peak
        dc = sum(p.peak_requests_per_s * p.decode_tokens_per_request for p in pools) / peak
        share = sum(p.peak_requests_per_s * p.replica_s_per_request * p.prefill_share for p in pools) / busy
        pools.append(Pool("mirror", peak * mirror, pf, dc, busy / peak, share, n, n * gpr))
    replicas = sum(p.replicas for p in pools)
    per_cell = int(f.number("max_gpus_per_cell")) // gpr
    if per_cell < 1:
        raise ValueError(f"max_gpus_per_cell: {f.get('max_gpus_per_cell')} GPUs hold no {gpr}-GPU replica")
    cells = max(1, safe_ceil(replicas / per_cell))
    gateways = safe_ceil(
        peak / cells / (_positive(f.number("gateway_rps_per_replica"), "gateway_rps_per_replica") * util)
    )
    ops = peak * f.number("redis_decisions_per_request")
    shard_ops = _positive(f.number("redis_ops_per_s_per_shard"), "redis_ops_per_s_per_shard")
    shards = safe_ceil(ops / cells / (shard_ops * util))
    records = peak * mirror
    return CapacityPlan(
        average_requests_per_s=average,
        peak_requests_per_s=peak,
        replica=r,
        pools=tuple(pools),
        replicas=replicas,
        gpus=replicas * gpr,
        replicas_per_cell=per_cell,
        cells=cells,
        gateway_replicas_per_cell=gateways,
        gateway_replicas=gateways * cells,
        redis_ops_per_s=ops,
        redis_keys_per_s=ops * f.number("redis_keys_per_decision"),
        redis_shards_per_cell=shards,
        redis_shards=shards * cells,
        redis_nodes=shards * cells * int(f.number("redis_replication_factor")),
        mirror_records_per_s=records,
        mirror_bytes_per_s=records * f.number("mirror_record_bytes") if records else 0.0,
    )
