"""The figures a capacity plan rests on: each one measured (a file and its key) or assumed (a reason).

Nothing has a default. The plan reads every figure through `Figures.get`; a figure that no
file measured and no profile or `--assume` gave is a `MissingFigure` naming it. The figures
read are recorded, so the report lists exactly what the plan used and where each came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# name -> what it is; the report prints this beside the value.
FIGURES: dict[str, str] = {
    "users": "users served",
    "daily_active_fraction": "share of users active on a given day",
    "requests_per_active_user_per_day": "requests of one active user per day",
    "peak_to_average": "diurnal peak requests/s over the daily average",
    "mode_mix": "shares of requests per mode (instant, thinking, contemplating); sum to 1",
    "context_mix": "shares of requests by tokens held in KV (prompt + history + output); sum to 1",
    "prompt_tokens": "mean prompt tokens per request (history and media included)",
    "output_tokens": "mean answer tokens per request",
    "reasoning_tokens": "mean reasoning tokens of a thinking request and of each contemplating agent",
    "contemplating_agents": "agents per contemplating request",
    "agent_answer_tokens": "answer tokens of each agent (the synthesis reads them as prompt)",
    "synthesis_reasoning_tokens": "reasoning tokens of a contemplating request's synthesis pass",
    "agents_prefill_ratio": "prefill of N agents sharing one prompt over N separate requests",
    "model_size": "named model shape (museserve.model.config): 1b, 8b, 70b, ...",
    "vocab_size": "vocabulary of the model (its embedding weights)",
    "weight_bytes_per_parameter": "bytes per weight (2: bfloat16)",
    "kv_element_bytes": "bytes per KV-cache element (2: bfloat16)",
    "tensor_parallel": "GPUs per pipeline stage of one replica",
    "pipeline_parallel": "pipeline stages of one replica",
    "gpu_memory_gib": "memory of one GPU, GiB",
    "gpu_memory_utilisation": "share of GPU memory for weights + KV cache (the rest: activations, graphs)",
    "decode_tokens_per_s_per_replica": "decode tokens/s one replica generates with a full batch",
    "decode_step_s": "seconds of one decode step at that rate (sequences per step = tokens/s x step)",
    "prefill_tokens_per_s_per_replica": "prompt tokens/s one replica prefills",
    "prefix_hit_rate": "share of prompt tokens served from the prefix cache (not prefilled)",
    "target_utilisation": "every tier is sized to run at this share of its capacity at peak",
    "max_gpus_per_cell": "GPUs in one cell (one Ray cluster)",
    "gateway_rps_per_replica": "requests/s one gateway replica handles",
    "redis_decisions_per_request": "Redis scripts per request (rate-limit decision + settle)",
    "redis_keys_per_decision": "keys one decision touches (one hash slot: a tenant's keys share a tag)",
    "redis_ops_per_s_per_shard": "decisions/s one Redis primary serves",
    "redis_replication_factor": "copies of each shard (primary + replicas)",
    "mirror_fraction": "share of requests copied to the mirror candidate pool and stream",
    "mirror_record_bytes": "bytes of one mirror stream record",
}


class MissingFigure(ValueError):
    """A figure the plan needs that was neither measured nor assumed."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"{name}: neither measured nor assumed ({FIGURES.get(name, '?')}); pass a file that measures it, "
            f"or --assume '{name}=VALUE:REASON', or give it in the --profile YAML with its reason"
        )


@dataclass(frozen=True)
class Figure:
    name: str
    value: Any  # a number, a name, or a mapping (a mix)
    kind: str  # "measured" or "assumed"
    source: str  # measured: "file: key (derivation)"; assumed: the reason
    replaces: str = ""  # an assumption given over a measurement: what that measurement was
    over_measured: bool = False  # an assumption that wins over a measurement of the same figure

    def to_json(self) -> dict[str, Any]:
        doc = {"value": self.value, "kind": self.kind, "source": self.source}
        return {**doc, "replaces": self.replaces} if self.replaces else doc


def measured(name: str, value: Any, path: Path | str, key: str) -> Figure:
    return Figure(name, value, "measured", f"{path}: {key}")


def assumed(name: str, value: Any, reason: str, over_measured: bool = False) -> Figure:
    if name not in FIGURES:
        raise ValueError(f"{name}: not a figure of the plan; known: {', '.join(FIGURES)}")
    if not str(reason).strip():
        raise ValueError(f"{name}: an assumed figure needs its reason")
    if isinstance(value, str):
        value = _value(value)  # YAML reads 3.3e9 (no dot before the e) as a string
    return Figure(name, value, "assumed", str(reason).strip(), over_measured=over_measured)


class Figures:
    """The plan's inputs; `get` records each name read (in order), for the report."""

    def __init__(self, figures: Iterable[Figure]) -> None:
        self._all: dict[str, Figure] = {}
        for f in figures:
            self._all[f.name] = f
        self.used: dict[str, Figure] = {}

    def get(self, name: str) -> Any:
        if name not in self._all:
            raise MissingFigure(name)
        self.used[name] = self._all[name]
        return self._all[name].value

    def number(self, name: str) -> float:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return value

    def mix(self, name: str) -> dict[str, float]:
        value = self.get(name)
        if not isinstance(value, Mapping) or not all(isinstance(v, (int, float)) for v in value.values()):
            raise ValueError(f"{name}: expected a mix name -> share, got {value!r}")
        return {str(k): float(v) for k, v in value.items()}

    def __contains__(self, name: str) -> bool:
        return name in self._all


def merge(measurements: Iterable[Figure], profile: Iterable[Figure], given: Iterable[Figure] = ()) -> Figures:
    """Later measurements win over earlier ones. A profile's assumption fills a figure no file
    measured, and replaces a measurement only where it says so (`replaces_measured: true`, e.g. a
    GPU figure over a CPU bench); `--assume` (`given`) always wins. A replaced measurement is
    named in the assumption's `replaces`, so the report shows both."""
    out: dict[str, Figure] = {}
    for f in measurements:
        out[f.name] = f
    for f in [*profile, *given]:
        old = out.get(f.name)
        if old is not None and old.kind == "measured":
            if not f.over_measured:
                continue
            f = Figure(f.name, f.value, f.kind, f.source, f"measured {_show(old.value)} at {old.source}")
        out[f.name] = f
    return Figures(out.values())


def parse_assume(text: str) -> Figure:
    """`NAME=VALUE:REASON`; VALUE a number, a name, or a mix `a=0.5,b=0.5` given as `a/0.5+b/0.5`."""
    name, eq, rest = text.partition("=")
    value, colon, reason = rest.partition(":")
    if not eq or not colon:
        raise ValueError(f"--assume {text!r}: expected NAME=VALUE:REASON")
    return assumed(name.strip(), _value(value.strip()), reason, over_measured=True)


def load_profile(path: Path) -> list[Figure]:
    """A YAML mapping `name: {value: ..., reason: ..., replaces_measured: false}`: every entry an
    assumption with its reason; `replaces_measured: true` lets it win over a file's measurement."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected a mapping of figure -> {{value, reason}}")
    out = []
    for name, entry in doc.items():
        if not isinstance(entry, Mapping) or "value" not in entry or "reason" not in entry:
            raise ValueError(f"{path}: {name}: expected {{value: ..., reason: ...}}")
        unknown = sorted(set(entry) - {"value", "reason", "replaces_measured"})
        if unknown:
            raise ValueError(f"{path}: {name}: unknown key {', '.join(unknown)}")
        out.append(assumed(str(name), entry["value"], entry["reason"], bool(entry.get("replaces_measured"))))
    return out


def _value(text: str) -> Any:
    if "/" in text:  # a mix: instant/0.7+thinking/0.3
        return {k.strip(): float(v) for k, _, v in (p.partition("/") for p in text.split("+"))}
    try:
        return float(text)
    except ValueError:
        return text


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
