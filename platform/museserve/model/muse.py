"""The Muse decoder-only language model, laid out with Hugging Face Llama parameter names."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from museserve.model.config import MuseConfig
from museserve.model.layers import Attention, AttentionBackend, RMSNorm, RotaryEmbedding, SwiGLUMLP


class DecoderLayer(nn.Module):
    def __init__(self, config: MuseConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLUMLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        hidden: Tensor,
        residual: Tensor | None,
        cos: Tensor,
        sin: Tensor,
        cache: AttentionBackend,
    ) -> tuple[Tensor, Tensor]:
        """Returns (this layer's output, residual stream before it); their sum is the new stream."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(hidden, cos, sin, cache)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class MuseModel(nn.Module):
    def __init__(self, config: MuseConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)

    def forward(self, input_embeds: Tensor, positions: Tensor, cache: AttentionBackend) -> Tensor:
        cos, sin = self.rotary_emb(positions, input_embeds.dtype)  # [T, head_dim] each
        hidden, residual = input_embeds, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cos, sin, cache)
        normed, _ = self.norm(hidden, residual)
        return normed


class MuseForCausalLM(nn.Module):
    """One sequence at a time: T new tokens attend to the cached tokens and to each other.

    With tied embeddings there is no `lm_head` module; logits use `model.embed_tokens.weight`.
    """

    def __init__(self, config: MuseConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MuseModel(config)
        self.lm_head: nn.Linear | None = None
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def embed(self, input_ids: Tensor) -> Tensor:
        """[T] token ids -> [T, hidden]. Callers may overwrite rows with other features."""
        return self.model.embed_tokens(input_ids)

    def forward(self, input_embeds: Tensor, positions: Tensor, cache: AttentionBackend) -> Tensor:
        """input_embeds [T, hidden], positions [T] -> hidden [T, hidden]; appends T to `cache`."""
        if input_embeds.dim() != 2 or input_embeds.shape[1] != self.config.hidden_size:
            raise ValueError(f"input_embeds must be [T, {self.config.hidden_size}], got {tuple(input_embeds.shape)}")
        if positions.shape != (input_embeds.shape[0],):
            raise ValueError(f"positions must be [{input_embeds.shape[0]}], got {tuple(positions.shape)}")
        return self.model(input_embeds, positions, cache)

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """hidden [T, hidden] -> float32 logits [T, vocab]."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight).float()

    def logits_for_tokens(self, input_ids: Tensor, positions: Tensor, cache: AttentionBackend) -> Tensor:
        """Convenience for plain text: embed, forward and project in one call."""
        return self.compute_logits(self.forward(self.embed(input_ids), positions, cache))
