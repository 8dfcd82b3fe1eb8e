"""The Muse language model: config, layers, a per-sequence KV cache and weight loading."""

from museserve.model.config import MuseConfig, RopeScaling
from museserve.model.kv_cache import SequenceKVCache
from museserve.model.loader import build_model
from museserve.model.muse import MuseForCausalLM

__all__ = [
    "MuseConfig",
    "MuseForCausalLM",
    "RopeScaling",
    "SequenceKVCache",
    "build_model",
]
