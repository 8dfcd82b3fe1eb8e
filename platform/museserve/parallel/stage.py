"""One worker's share of the model and its step: the stage's layers (all TP ranks of a stage
hold the same, sharded), its KV cache, and the forward from the stage's input to its output.

The residual stream crosses a stage boundary as one tensor, hidden + residual [T, hidden]:
the next stage's first layer then normalises it exactly as the layer would have normalised
(hidden, residual) in one process (`RMSNorm(x, r)` computes `x + r` first, too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.attention import sdpa_kernel

from museserve.engine.plan import SchedulerPlan
from museserve.model.config import MuseConfig
from museserve.model.cpu_linear import PackedLinear
from museserve.model.layers import TiedLMHead
from museserve.model.loader import build_model
from museserve.model.muse import MuseForCausalLM
from museserve.parallel.plan import WorkerSpec, shard_architecture
from museserve.runner.kv_pool import SDPA_BACKENDS, PagedKVPool
from museserve.runner.paged_step import PagedStep
from museserve.runner.step_inputs import media_inputs, step_inputs


def prune_to_stage(spec: WorkerSpec):
    """A `build_model` prune hook: keeps the stage's layers (under their own indices, so they
    load the same tensors as in the whole model), the embeddings and projectors on the first
    stage, the final norm and head on the last (and the embeddings there too when tied)."""

    def prune(model: MuseForCausalLM) -> None:
        inner = model.model
        for index in range(len(inner.layers)):
            if index not in spec.layers:
                inner.layers[index] = nn.Identity()  # no parameters; never called
        if not spec.is_first:
            inner.image_projector = inner.audio_projector = None
            if not (spec.is_last and model.config.tie_word_embeddings):
                inner.embed_tokens = None
        if not spec.is_last:
            inner.norm = None
            model.lm_head = None

    return prune


class StageStep:
    """The attention backend of a stage: global layer indices onto the stage's own KV pool."""

    def __init__(self, step: PagedStep, first_layer: int):
        self.step = step
        self.first_layer = first_layer

    def attend(self, layer_idx: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.step.attend(layer_idx - self.first_layer, q, k, v)


class StageRunner:
    def __init__(
        self,
        spec: WorkerSpec,
        model: MuseForCausalLM,
        arch: MuseConfig,
        num_blocks: int,
        block_size: int,
        *,
        kv_dtype: torch.dtype | None = None,
    ):
        """`model`: already pruned to the stage (and sharded when spec.tensor > 1); `arch`: the whole
        model's. `kv_dtype`: the pool's `kv_cache_dtype` (None: the model's dtype)."""
        self.spec = spec
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        shard = shard_architecture(arch, spec.tensor, spec.layers)
        self.pool = PagedKVPool(shard, num_blocks, block_size, dtype=kv_dtype or self.dtype, device=self.device)
        self.decode_group = 8 if self.device.type == "cpu" else 1024

    @torch.inference_mode()
    def forward(self, plan: SchedulerPlan, hidden: Tensor | None) -> Tensor:
        """First stage: `hidden` is None, the plan's tokens are embedded. Returns the stream
        [T, hidden] for the next stage, or on the last stage float32 logits [sampled rows, vocab]."""
        inputs = step_inputs(plan, self.pool.block_size, self.decode_group, self.device)
        if self.spec.is_first:
            rows, positions = media_inputs(plan, self.dtype, self.device)
            hidden = self.model.embed(inputs.ids, rows, positions)
        else:
            hidden = hidden.to(self.device, self.dtype)
        inner = self.model.model
        cos, sin = inner.rotary_emb(inputs.positions, hidden.dtype)  # [T, head_dim] each
        step = StageStep(PagedStep(self.pool, inputs.layout), self.spec.layers.start)
        residual = None
        with sdpa_kernel(SDPA_BACKENDS):
            for index in self.spec.layers:
                hidden, residual = inner.layers[index](hidden, residual, cos, sin, step)
        if not self.spec.is_last:
            return (hidden + residual).cpu()
        normed, _ = inner.norm(hidden, residual)
        return logits(self.model, normed[inputs.rows]).cpu()


def logits(model: MuseForCausalLM, hidden: Tensor) -> Tensor:
    """hidden [R, hidden] -> float32 [R, vocab]. DeepSpeed's TP head (input-sharded, all-reduced)
    takes [batch, T, hidden]; a plain, packed or tied head goes through the model's own projection."""
    head = model.lm_head
    if head is None or type(head) in (nn.Linear, PackedLinear) or isinstance(head, TiedLMHead):
        return model.compute_logits(hidden)
    return head(hidden[None])[0].float()


def build_stage_model(
    spec: WorkerSpec,
    arch: MuseConfig,
    *,
    load_format: str,
    seed: int,
    path: str | None,
    dtype: torch.dtype,
    device: torch.device,
    cpu_gemm: str = "onednn",
) -> MuseForCausalLM:
    """A tensor-parallel stage keeps `nn.Linear` (DeepSpeed shards those) whatever `cpu_gemm` says."""
    return build_model(
        arch,
        load_format=load_format,
        seed=seed,
        dtype=dtype,
        path=path,
        device=device,
        prune=prune_to_stage(spec),
        cpu_gemm=cpu_gemm if spec.tensor == 1 else "torch",
    )
