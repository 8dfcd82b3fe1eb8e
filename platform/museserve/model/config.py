"""Model shape: a Llama-family decoder (GQA attention, SwiGLU MLP, RMSNorm, RoPE), and the
Hugging Face `config.json` of the three architectures it serves: Llama, Qwen2 (q/k/v biases)
and Qwen3 (RMSNorm over head_dim on each query and key head)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from museserve.model.rope_scaling import (
    LONG_CONTEXT,
    AnyRopeScaling,
    RopeScaling,
    rope_entry,
    rope_scaling_from_hf,
)

# hidden, layers, heads, kv heads, intermediate, head_dim (0: hidden // heads), tied embeddings
_NAMED_SHAPES: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "tiny": (64, 2, 4, 2, 128, 0, False),  # unit tests
    "small": (512, 8, 8, 2, 1408, 0, False),  # CPU/GPU benchmarks
    "1b": (2048, 16, 32, 8, 8192, 64, True),  # planning only
    "8b": (4096, 32, 32, 8, 14336, 0, False),  # planning only
    "70b": (8192, 80, 64, 8, 28672, 0, False),  # planning only
}

_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
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
    rope_scaling: AnyRopeScaling | None = field(default_factory=RopeScaling)
    max_position_embeddings: int = LONG_CONTEXT
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 checkpoints carry q/k/v biases
    # Qwen3: `self_attn.q_norm`/`k_norm` [head_dim], RMSNorm of each query/key head before RoPE.
    qk_norm: bool = False
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
        if self.qkv_bias and self.qk_norm:
            raise ValueError("qkv_bias and qk_norm together match no served architecture (qwen2 or qwen3)")
        scaling = self.rope_scaling
        if isinstance(scaling, RopeScaling) and scaling.original_max_position_embeddings > self.max_position_embeddings:
            raise ValueError(
                "rope_scaling.original_max_position_embeddings "
                f"({scaling.original_max_position_embeddings}) exceeds max_position_embeddings "
                f"({self.max_position_embeddings})"
            )

    @property
    def model_type(self) -> str:
        """The Hugging Face `model_type` of this shape."""
        return "qwen3" if self.qk_norm else "qwen2" if self.qkv_bias else "llama"

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
        if self.qk_norm:
            attention += 2 * d
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
        """Read a Hugging Face Llama, Qwen2 or Qwen3 `config.json` dict. What the decoder cannot
        serve is a ValueError naming its key."""
        model_type = d.get("model_type", "llama")
        if model_type not in _HF_ARCHITECTURES:
            raise ValueError(f"model_type: {model_type!r} is not supported (supported: {', '.join(_HF_ARCHITECTURES)})")
        _refuse_unserved(d, model_type)
        rope_key, rope = rope_entry(d)
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
            # transformers 5 nests rope_theta under rope_parameters.
            rope_theta=float((d.get("rope_parameters") or {}).get("rope_theta", d.get("rope_theta", 10000.0))),
            rope_scaling=rope_scaling_from_hf(rope_key, rope),
            max_position_embeddings=int(d.get("max_position_embeddings", LONG_CONTEXT)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            image_feature_dim=int(d.get(IMAGE_FEATURE_DIM_KEY) or 0),
            audio_feature_dim=int(d.get(AUDIO_FEATURE_DIM_KEY) or 0),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A `config.json` that `from_hf_dict` reads back as this config and transformers loads
        as the same model (rope_theta and rope_scaling in the form both transformers 4 and 5 read)."""
        return {
            "architectures": [_HF_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
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


def _refuse_unserved(d: dict[str, Any], model_type: str) -> None:
    """Raises for `config.json` settings the decoder does not implement, naming the key."""
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act: {d['hidden_act']!r} is not supported (only 'silu')")
    # Qwen2 always has q/k/v biases (qkv_bias); elsewhere a bias also sits on o_proj.
    if model_type != "qwen2" and d.get("attention_bias", False):
        raise ValueError(f"attention_bias: attention biases on {model_type} checkpoints are not supported")
    if d.get("mlp_bias", False):
        raise ValueError("mlp_bias: MLP biases are not supported")
    # Qwen configs carry a `sliding_window` size even where it is off; these two switch it on.
    if d.get("use_sliding_window", False):
        raise ValueError("use_sliding_window: sliding-window attention is not supported")
    windowed = sorted({kind for kind in d.get("layer_types") or () if kind != "full_attention"})
    if windowed:
        raise ValueError(f"layer_types: only full_attention layers are supported, got {', '.join(windowed)}")


def check_parallel(arch: MuseConfig, tensor: int, pipeline: int) -> None:
    """Raises ValueError naming the field when the model cannot be split this way."""
    for heads, name in ((arch.num_attention_heads, "attention"), (arch.num_key_value_heads, "KV")):
        if heads % tensor:
            raise ValueError(f"parallel.tensor ({tensor}) must divide the model's {heads} {name} heads")
    if pipeline > arch.num_hidden_layers:
        raise ValueError(f"parallel.pipeline ({pipeline}) exceeds the model's {arch.num_hidden_layers} layers")
