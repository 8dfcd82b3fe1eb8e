"""RoPE frequency scalings the decoder serves, and their Hugging Face `config.json` form.

A checkpoint names its scaling under `rope_scaling` (transformers 4) or `rope_parameters`
(transformers 5, which also moves `rope_theta` there), as `rope_type` or the older `type`.
Served: "default" (no scaling), "llama3" and "linear"; any other type is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

LONG_CONTEXT = 262_144
ROPE_ORIGINAL_CONTEXT = 8192
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """llama3-style frequency scaling: low frequencies are stretched by `factor`, high ones kept.

    Wavelengths shorter than original/high_freq_factor are unchanged, longer than
    original/low_freq_factor are divided by `factor`, and the band between is interpolated.
    """

    rope_type: ClassVar[str] = "llama3"
    factor: float = LONG_CONTEXT / ROPE_ORIGINAL_CONTEXT
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = ROPE_ORIGINAL_CONTEXT

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"rope_scaling.factor must be >= 1, got {self.factor}")
        if not 0.0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                "rope_scaling needs 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )
        if self.original_max_position_embeddings <= 0:
            raise ValueError("rope_scaling.original_max_position_embeddings must be positive")

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "rope_type": self.rope_type,
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


@dataclass(frozen=True, slots=True)
class LinearRopeScaling:
    """Position interpolation: the angle at position p is the unscaled one at p / factor."""

    rope_type: ClassVar[str] = "linear"
    factor: float

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"rope_scaling.factor must be >= 1, got {self.factor}")

    def to_hf_dict(self) -> dict[str, Any]:
        return {"rope_type": self.rope_type, "factor": self.factor}


AnyRopeScaling = RopeScaling | LinearRopeScaling


def rope_entry(d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(key, dict) of a `config.json`'s RoPE description: `rope_scaling` where it is set, else
    `rope_parameters`; an empty dict (no scaling) where neither is."""
    for key in ("rope_scaling", "rope_parameters"):
        if d.get(key):
            return key, d[key]
    return "rope_parameters", {}


def rope_scaling_from_hf(key: str, d: dict[str, Any]) -> AnyRopeScaling | None:
    """The scaling described by `d`, read from `config.json` under `key`; None for "default".
    Errors name the offending key, e.g. `rope_parameters.rope_type`."""
    type_key = "rope_type" if "rope_type" in d else "type"
    rope_type = d.get(type_key, "default")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{key}.{type_key}: {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if float(d.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError(f"{key}.partial_rotary_factor: only 1.0 (RoPE over the whole head) is supported")
    if rope_type == "default":
        return None

    def required(name: str) -> float:
        if d.get(name) is None:
            raise ValueError(f"{key}.{name}: required for rope type {rope_type!r}")
        return float(d[name])

    if rope_type == "linear":
        return LinearRopeScaling(factor=required("factor"))
    return RopeScaling(
        factor=required("factor"),
        low_freq_factor=required("low_freq_factor"),
        high_freq_factor=required("high_freq_factor"),
        original_max_position_embeddings=int(required("original_max_position_embeddings")),
    )
