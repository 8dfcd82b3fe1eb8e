"""The capacity model's assumptions: frozen dataclasses, each field with its help and source.

Every field becomes a `museserve-loadtest capacity` flag (`--field-name`); its `help`
metadata is the flag's help and the note printed beside the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MODES = ("instant", "thinking", "contemplating")
MODALITIES = ("text", "image", "audio")


def _f(default: Any, help: str) -> Any:
    if isinstance(default, Mapping):
        return field(default_factory=lambda: dict(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Traffic:
    users: float = _f(3.3e9, "users served")
    daily_active_fraction: float = _f(0.3, "share of users active on a given day")
    requests_per_active_user_per_day: float = _f(10.0, "requests of one active user per day")
    peak_to_average: float = _f(3.0, "diurnal peak requests/s over the daily average")


@dataclass(frozen=True)
class Workload:
    mode_mix: Mapping[str, float] = _f(
        {"instant": 0.7, "thinking": 0.25, "contemplating": 0.05}, "shares of requests per mode; sum to 1"
    )
    modality_mix: Mapping[str, float] = _f(
        {"text": 0.9, "image": 0.08, "audio": 0.02}, "shares of requests with text only, one image, one audio clip"
    )
    prompt_tokens: float = _f(512.0, "mean text prompt tokens per request")
    output_tokens: float = _f(256.0, "mean answer tokens per request")
    reasoning_tokens: float = _f(1024.0, "mean reasoning tokens of a thinking request and of each contemplating agent")
    contemplating_agents: int = _f(4, "agents per contemplating request (pool contemplating.default_agents)")
    agent_answer_tokens: float = _f(256.0, "answer tokens per agent (pool contemplating.agent_answer_tokens)")
    synthesis_reasoning_tokens: float = _f(128.0, "synthesis reasoning (pool contemplating.synthesis_thinking_budget)")
    image_tokens: float = _f(1024.0, "extra prompt tokens per image (preprocess media.max_image_tokens, the cap)")
    audio_tokens: float = _f(250.0, "extra prompt tokens per clip: 10 s x 25 tokens/s (10 ms frames, 4 per token)")
    prefill_weight: float = _f(
        0.05, "decode-token equivalents per prefill token (estimate: batched prefill is compute-bound, ~20x cheaper)"
    )


@dataclass(frozen=True)
class Measured:
    goodput_rps_per_replica: float = _f(2.0, "requests/s one replica served within the SLO (placeholder)")
    tokens_per_s_per_replica: float = _f(
        512.0, "decode tokens/s (answer + reasoning) of those requests per replica (placeholder)"
    )
    measured_prompt_tokens: float = _f(512.0, "mean prompt tokens of the measured requests")
    source: str = _f("placeholder flags, not a measurement: pass --from-run", "where the measurement came from")


@dataclass(frozen=True)
class Fleet:
    tensor_parallel: int = _f(8, "GPUs per pipeline stage of one model replica")
    pipeline_parallel: int = _f(1, "pipeline stages of one model replica")
    gpus_per_node: int = _f(8, "GPUs per node")
    max_nodes_per_cell: int = _f(2000, "nodes in one Ray cluster (cell)")
    max_gpus_per_cell: int = _f(0, "GPUs in one cell; 0: no limit beyond the node count")
    target_utilisation: float = _f(0.7, "headroom: every tier is sized to run at this fraction of capacity at peak")

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel


@dataclass(frozen=True)
class Services:
    gateway_rps_per_replica: float = _f(
        500.0, "requests/s one gateway replica handles (estimate: bench_gateway measures latency, not throughput)"
    )
    redis_decisions_per_request: float = _f(
        1.0, "rate-limit scripts per request (bench_gateway: 1.0; output tokens settle with the next decision)"
    )
    redis_xadds_per_mirrored_request: float = _f(1.0, "mirror record XADDs per mirrored request")
    redis_ops_per_s_per_shard: float = _f(
        25_000.0,
        "decisions/s one Redis primary serves (measured 17,700/s, 28.6 us/call server time, 4-key script on 2 vCPUs;"
        " the ~13,000/s of DESIGN.md is one Python client's limit, not Redis')",
    )
    redis_replication_factor: int = _f(2, "copies of each shard (primary + replicas); replicas add no write capacity")
    mirror_fraction: float = _f(0.01, "share of requests copied to the mirror candidate pool")
    image_preprocess_ms: float = _f(15.9, "CPU ms to preprocess one image (.bench/modes.json image_preprocess_ms_p50)")
    audio_preprocess_ms: float = _f(17.7, "CPU ms per 10 s clip (.bench/modes.json: 1.77 ms per audio second)")


@dataclass(frozen=True)
class Assumptions:
    traffic: Traffic = field(default_factory=Traffic)
    workload: Workload = field(default_factory=Workload)
    measured: Measured = field(default_factory=Measured)
    fleet: Fleet = field(default_factory=Fleet)
    services: Services = field(default_factory=Services)

    def validate(self) -> None:
        """Raises ValueError naming the field: numbers finite, >= 0 (> 0 where divided by), fractions <= 1."""
        for section in dataclasses.fields(self):
            for f in dataclasses.fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), f.name)
                if isinstance(value, (int, float)):
                    _check_number(f.name, value)
        w, f, s = self.workload, self.fleet, self.services
        _check_shares("mode_mix", w.mode_mix, MODES)
        _check_shares("modality_mix", w.modality_mix, MODALITIES)
        positive = {
            "users": self.traffic.users,
            "goodput_rps_per_replica": self.measured.goodput_rps_per_replica,
            "tokens_per_s_per_replica": self.measured.tokens_per_s_per_replica,
            "gateway_rps_per_replica": s.gateway_rps_per_replica,
            "redis_ops_per_s_per_shard": s.redis_ops_per_s_per_shard,
            "target_utilisation": f.target_utilisation,
            "peak_to_average": self.traffic.peak_to_average,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name}: must be > 0, got {value}")
        for name in ("tensor_parallel", "pipeline_parallel", "gpus_per_node", "max_nodes_per_cell"):
            if getattr(f, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(f, name)}")
        if s.redis_replication_factor < 1 or w.contemplating_agents < 1:
            raise ValueError("redis_replication_factor and contemplating_agents: must be >= 1")
        for name, value in (
            ("daily_active_fraction", self.traffic.daily_active_fraction),
            ("target_utilisation", f.target_utilisation),
            ("mirror_fraction", s.mirror_fraction),
        ):
            if value > 1:
                raise ValueError(f"{name}: a fraction, must be <= 1, got {value}")
        if math.ceil(f.gpus_per_replica / f.gpus_per_node) > f.max_nodes_per_cell:
            raise ValueError(f"max_nodes_per_cell: {f.max_nodes_per_cell} nodes hold no whole model replica")
        if f.max_gpus_per_cell and f.max_gpus_per_cell < max(f.gpus_per_node, f.gpus_per_replica):
            raise ValueError(f"max_gpus_per_cell: {f.max_gpus_per_cell} holds no whole node or replica")


def _check_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {value}")


def _check_shares(name: str, shares: Mapping[str, float], keys: tuple[str, ...]) -> None:
    unknown = sorted(set(shares) - set(keys))
    if unknown:
        raise ValueError(f"{name}: unknown {', '.join(unknown)}; known: {', '.join(keys)} (a missing one is 0)")
    for key, value in shares.items():
        _check_number(f"{name}.{key}", value)
    total = sum(shares.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name}: shares sum to {total:g}, must sum to 1")
