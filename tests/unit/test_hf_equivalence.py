"""Our model against Hugging Face's LlamaForCausalLM holding the same weights.

The dummy `tiny` model's state_dict loads into transformers' Llama as is (same parameter
names, config from `MuseConfig.to_hf_dict()`, llama3 RoPE scaling included), and both
produce the same float32 logits. RoPE only sees relative distances, so the long-position
case spreads 50 tokens over positions up to ~20k: distances beyond the scaling's original
8192 positions reach the stretched low frequencies.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from museserve.config import PoolConfig  # noqa: E402
from museserve.model.muse import MuseForCausalLM  # noqa: E402
from museserve.preprocess.tokenizer import MuseTokenizer  # noqa: E402
from museserve.runner.loading import load_pool_model  # noqa: E402
from tests.reference_kv_cache import SequenceKVCache, reference_logits  # noqa: E402

TOLERANCE = 1e-4
NUM_TOKENS = 50


@pytest.fixture(scope="module")
def ours() -> MuseForCausalLM:
    return load_pool_model(PoolConfig(name="t", model={"device": "cpu"}), MuseTokenizer.load(None).vocab_size)


@pytest.fixture(scope="module")
def theirs(ours: MuseForCausalLM):
    config = transformers.LlamaConfig(**ours.config.to_hf_dict())
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def token_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(32, 8000, (NUM_TOKENS,), generator=generator)


@torch.inference_mode()
def _both(ours: MuseForCausalLM, theirs, ids: torch.Tensor, positions: torch.Tensor) -> tuple:
    mine = reference_logits(ours, ids, positions, SequenceKVCache.for_model(ours.config))
    # An explicit mask: without one, transformers reads non-contiguous position_ids as packed sequences.
    mask = torch.ones(1, ids.shape[0], dtype=torch.long)
    out = theirs(input_ids=ids[None, :], attention_mask=mask, position_ids=positions[None, :], use_cache=False)
    hf = out.logits[0].float()
    return mine, hf


def test_configs_agree(ours: MuseForCausalLM, theirs) -> None:
    rope = theirs.config.rope_parameters
    assert rope["rope_type"] == "llama3"
    assert rope["factor"] == ours.config.rope_scaling.factor
    assert rope["original_max_position_embeddings"] == ours.config.rope_scaling.original_max_position_embeddings
    assert rope["rope_theta"] == ours.config.rope_theta
    assert sum(p.numel() for p in theirs.parameters()) == ours.config.num_parameters


def test_rope_frequencies_match(ours: MuseForCausalLM, theirs) -> None:
    mine = ours.model.rotary_emb.inverse_frequencies(torch.device("cpu"))
    torch.testing.assert_close(theirs.model.rotary_emb.inv_freq.float(), mine, rtol=1e-6, atol=0)


def test_logits_match(ours: MuseForCausalLM, theirs, token_ids: torch.Tensor) -> None:
    mine, hf = _both(ours, theirs, token_ids, torch.arange(NUM_TOKENS))
    assert mine.shape == hf.shape == (NUM_TOKENS, ours.config.vocab_size)
    torch.testing.assert_close(mine, hf, rtol=0, atol=TOLERANCE)
    assert torch.equal(mine.argmax(-1), hf.argmax(-1))


def test_logits_match_beyond_original_context(ours: MuseForCausalLM, theirs, token_ids: torch.Tensor) -> None:
    positions = torch.arange(NUM_TOKENS) * 401 + 7  # 7 .. 19656: distances up to 2.4x the original 8192
    assert positions[-1] > 2 * ours.config.rope_scaling.original_max_position_embeddings
    mine, hf = _both(ours, theirs, token_ids, positions)
    torch.testing.assert_close(mine, hf, rtol=0, atol=TOLERANCE)


def test_logits_match_with_cache_after_long_prefix(ours: MuseForCausalLM, theirs, token_ids: torch.Tensor) -> None:
    """Prefill 49 tokens, then decode the 50th at position 9000 from each side's KV cache."""
    positions = torch.cat([torch.arange(NUM_TOKENS - 1) * 150, torch.tensor([9000])])
    with torch.inference_mode():
        cache = SequenceKVCache.for_model(ours.config)
        reference_logits(ours, token_ids[:-1], positions[:-1], cache)
        mine = reference_logits(ours, token_ids[-1:], positions[-1:], cache)
        mask = torch.ones(1, NUM_TOKENS, dtype=torch.long)
        prefill = theirs(
            input_ids=token_ids[None, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[None, :-1],
            use_cache=True,
        )
        hf = theirs(
            input_ids=token_ids[None, -1:],
            attention_mask=mask,
            position_ids=positions[None, -1:],
            past_key_values=prefill.past_key_values,
            use_cache=True,
        ).logits[0]
    torch.testing.assert_close(mine, hf.float(), rtol=0, atol=TOLERANCE)
