"""The Muse decoder-only language model, laid out with Hugging Face Llama parameter names.

Early fusion: an image or audio token's embedding is a linear projection of its feature row
(one image patch, or stacked log-mel frames) into the hidden size, in place of the
`<|image|>`/`<|audio|>` placeholder's own embedding. The projectors are
`model.image_projector.{weight,bias}` [hidden, image_feature_dim] / [hidden] and
`model.audio_projector.{weight,bias}` [hidden, audio_feature_dim] / [hidden]; a model whose
config gives a feature dim of 0 has no such projector (a text-only checkpoint).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from museserve.model.config import MuseConfig
from museserve.model.layers import Attention, AttentionBackend, RMSNorm, RotaryEmbedding, SwiGLUMLP, TiedLMHead


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
        dims = config.media_feature_dims
        self.image_projector = nn.Linear(dims["image"], config.hidden_size) if "image" in dims else None
        self.audio_projector = nn.Linear(dims["audio"], config.hidden_size) if "audio" in dims else None

    def projector(self, kind: str) -> nn.Module:
        projector = {"image": self.image_projector, "audio": self.audio_projector}.get(kind)
        if projector is None:
            raise ValueError(f"this model has no {kind} projector: it takes no {kind} input")
        return projector

    def forward(self, input_embeds: Tensor, positions: Tensor, cache: AttentionBackend) -> Tensor:
        cos, sin = self.rotary_emb(positions, input_embeds.dtype)  # [T, head_dim] each
        hidden, residual = input_embeds, None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual, cos, sin, cache)
        normed, _ = self.norm(hidden, residual)
        return normed


class MuseForCausalLM(nn.Module):
    """A step's tokens, flattened: T new tokens of one or many sequences; the attention backend
    (`AttentionBackend`) says which earlier tokens each attends to.

    `lm_head` is an `nn.Linear` of its own weight, or with tied embeddings a `TiedLMHead` that
    reads `model.embed_tokens.weight`; either may be replaced by its packed CPU form
    (`cpu_linear`), and a pipeline stage that computes no logits has none.
    """

    def __init__(self, config: MuseConfig) -> None:
        super().__init__()
        self.config = config
        self.model = MuseModel(config)
        self.lm_head: nn.Module | None
        if config.tie_word_embeddings:
            self.lm_head = TiedLMHead()
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def embed(
        self,
        input_ids: Tensor,
        media_rows: dict[str, Tensor] | None = None,
        media_positions: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """[T] token ids -> [T, hidden]. Per media kind, `media_rows[kind]` [R, feature_dim] are
        projected and replace the embeddings at rows `media_positions[kind]` [R] (long, into T)."""
        embeds = self.model.embed_tokens(input_ids)
        for kind, rows in (media_rows or {}).items():
            positions = media_positions[kind] if media_positions else None
            if positions is None or positions.shape != (rows.shape[0],):
                raise ValueError(f"{kind}: {rows.shape[0]} feature rows need as many positions")
            projected = self.model.projector(kind)(rows.to(embeds.dtype))  # [R, hidden]
            embeds = torch.index_copy(embeds, 0, positions, projected)
        return embeds

    def forward(self, input_embeds: Tensor, positions: Tensor, cache: AttentionBackend) -> Tensor:
        """input_embeds [T, hidden], positions [T] -> hidden [T, hidden]; `cache` stores the T tokens' k/v."""
        if input_embeds.dim() != 2 or input_embeds.shape[1] != self.config.hidden_size:
            raise ValueError(f"input_embeds must be [T, {self.config.hidden_size}], got {tuple(input_embeds.shape)}")
        if positions.shape != (input_embeds.shape[0],):
            raise ValueError(f"positions must be [{input_embeds.shape[0]}], got {tuple(positions.shape)}")
        return self.model(input_embeds, positions, cache)

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """hidden [T, hidden] -> float32 logits [T, vocab]."""
        if isinstance(self.lm_head, TiedLMHead):
            return self.lm_head(hidden, self.model.embed_tokens.weight).float()
        if self.lm_head is None:
            raise RuntimeError("this model holds no LM head (a pipeline stage before the last)")
        return self.lm_head(hidden).float()
