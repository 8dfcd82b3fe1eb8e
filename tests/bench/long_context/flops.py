"""Floating-point work of one prefill, for comparing measured times across context lengths."""

from __future__ import annotations

from museserve.model.config import MuseConfig


def prefill_flops(config: MuseConfig, num_tokens: int) -> float:
    """Linear layers of every token, attention of token p over its p + 1 positions (q.k and p.v,
    a multiply and an add each), and the LM head of the last token only."""
    heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    hidden, layers = config.hidden_size, config.num_hidden_layers
    projections = hidden * dim * (2 * heads + 2 * kv_heads) + 3 * hidden * config.intermediate_size
    linear = 2.0 * projections * layers * num_tokens
    attention = 4.0 * heads * dim * layers * num_tokens * (num_tokens + 1) / 2
    return linear + attention + 2.0 * hidden * config.vocab_size
