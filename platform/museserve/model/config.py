"""Model shape: a Llama-family decoder (GQA attention, SwiGLU MLP, RMSNorm, llama3 RoPE)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LONG_CONTEXT = 262_144
ROPE_ORIGINAL_CONTEXT = 8192


@dataclass(frozen=True, slots=True)
class RopeScaling:
    """llama3-style frequency scaling: low frequencies are stretched by `factor`, high ones kept.

    Wavelengths shorter than original/high_freq_factor are unchanged, longer than
    original/low_freq_factor are divided by `factor`, and the band between is interpolated.
    """

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

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any] | None) -> RopeScaling | None:
        if not d:
            return None
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type == "default":
            return None
        if rope_type != "llama3":
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported (only 'llama3')")
        return cls(
            factor=float(d["factor"]),
            low_freq_factor=float(d["low_freq_factor"]),
            high_freq_factor=float(d["high_freq_factor"]),
            original_max_position_embeddings=int(d["original_max_position_embeddings"]),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "rope_type": "llama3",
            "factor": self.factor,
            "low_freq_factor": self.low_freq_factor,
            "high_freq_factor": self.high_freq_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }


# hidden, layers, heads, kv heads, intermediate, head_dim (0: hidden // heads), tied embeddings
_NAMED_SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "tiny": (64, 2, 4, 2, 128, 0, False),  # unit tests
    "small": (512, 8, 8, 2, 1408, 0, False),  # CPU/GPU benchmarks
    "1b": (2048, 16, 32, 8, 8192, 64, True),  # planning only
    "8b": (4096, 32, 32, 8, 14336, 0, False),  # planning only
    "70b": (8192, 80, 64, 8, 28672, 0, False),  # planning only
}

_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# config.json keys of a Muse checkpoint with media projectors; absent in text-only checkpoints.
IMAGE_FEATURE_DIM_KEY = "muse_image_feature_dim"
AUDIO_FEATURE_DIM_KEY = "muse_audio_feature_dim"


@dataclass(frozen=True, slots=True)
class MuseConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    # 0: hidden_size // num_attention_heads, resolved in __post_init__ (so `replace` keeps it).
    head_dim: int = 0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    rope_scaling: RopeScaling | None = field(default_factory=RopeScaling)
    max_position_embeddings: int = LONG_CONTEXT
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 checkpoints carry q/k/v biases
    # Early fusion: values per image / audio token fed to the projector into the embedding
    # space (see `muse.MuseModel`); 0: the model has no projector and takes no such input.
    # A text-only Hugging Face checkpoint has neither.
    image_feature_dim: int = 0
    audio_feature_dim: int = 0

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim == 0:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                    f"({self.num_attention_heads}) unless head_dim is given"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim < 0 or self.head_dim % 2:
            raise ValueError(f"head_dim must be positive and even for RoPE, got {self.head_dim}")
        if self.image_feature_dim < 0 or self.audio_feature_dim < 0:
            raise ValueError("image_feature_dim and audio_feature_dim must be >= 0")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ValueError("rms_norm_eps and rope_theta must be positive")
        scaling = self.rope_scaling
        if scaling and scaling.original_max_position_embeddings > self.max_position_embeddings:
            raise ValueError(
                "rope_scaling.original_max_position_embeddings "
                f"({scaling.original_max_position_embeddings}) exceeds max_position_embeddings "
                f"({self.max_position_embeddings})"
            )

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def media_feature_dims(self) -> dict[str, int]:
        """Media kind -> values per token, for the kinds this model has a projector for."""
        dims = {"image": self.image_feature_dim, "audio": self.audio_feature_dim}
        return {kind: dim for kind, dim in dims.items() if dim}

    @property
    def num_parameters(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attention = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        if self.qkv_bias:
            attention += d * (self.num_attention_heads + 2 * self.num_key_value_heads)
        per_layer = attention + 3 * h * self.intermediate_size + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        projectors = sum((dim + 1) * h for dim in self.media_feature_dims.values())
        return self.num_hidden_layers * per_layer + embeddings + projectors + h

    def kv_cache_bytes_per_token(self, bytes_per_element: int) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * bytes_per_element

    @classmethod
    def named(cls, size: str, vocab_size: int) -> MuseConfig:
        """A named shape with a 262,144-position context (rope_theta 1e6, llama3 scaling, 8192)."""
        if size not in _NAMED_SHAPES:
            raise ValueError(f"unknown model size {size!r}; known sizes: {', '.join(_NAMED_SHAPES)}")
        hidden, layers, heads, kv_heads, intermediate, head_dim, tied = _NAMED_SHAPES[size]
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            intermediate_size=intermediate,
            head_dim=head_dim,
            tie_word_embeddings=tied,
        )

    @staticmethod
    def named_sizes() -> tuple[str, ...]:
        return tuple(_NAMED_SHAPES)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MuseConfig:
        """Read a Hugging Face Llama or Qwen2 `config.json` dict."""
        model_type = d.get("model_type", "llama")
        if model_type not in _HF_ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is not supported; known: {', '.join(_HF_ARCHITECTURES)}")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported (only 'silu')")
        if model_type == "llama" and d.get("attention_bias", False):
            raise ValueError("attention_bias on Llama checkpoints is not supported")
        if d.get("use_sliding_window", False):
            raise ValueError("sliding-window attention is not supported")
        # Newer transformers releases nest rope_theta and the scaling under rope_parameters.
        rope = d.get("rope_parameters") or {}
        heads = int(d["num_attention_heads"])
        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            intermediate_size=int(d["intermediate_size"]),
            head_dim=int(d.get("head_dim") or 0),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
            rope_scaling=RopeScaling.from_hf_dict(d.get("rope_scaling") or rope or None),
            max_position_embeddings=int(d.get("max_position_embeddings", LONG_CONTEXT)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2",
            image_feature_dim=int(d.get(IMAGE_FEATURE_DIM_KEY) or 0),
            audio_feature_dim=int(d.get(AUDIO_FEATURE_DIM_KEY) or 0),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        model_type = "qwen2" if self.qkv_bias else "llama"
        return {
            "architectures": [_HF_ARCHITECTURES[model_type]],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_hf_dict() if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            # Our own keys: transformers keeps unknown keys as plain attributes.
            **({IMAGE_FEATURE_DIM_KEY: self.image_feature_dim} if self.image_feature_dim else {}),
            **({AUDIO_FEATURE_DIM_KEY: self.audio_feature_dim} if self.audio_feature_dim else {}),
        }
