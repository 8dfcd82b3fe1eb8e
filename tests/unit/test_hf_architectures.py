"""Our decoder built from real transformers checkpoints of each served architecture (Llama
untied and tied, Qwen2, Qwen3) gives transformers' float32 logits on the same weights: one-shot
prefill, chunked prefill through the engine's paged KV path, and paged decode past 4K positions.

Each checkpoint is a seeded random transformers model written by `save_pretrained` and read
back by `build_model` (safetensors, oneDNN-packed linears and tied head). Weights are drawn at
std 0.1, norms and biases perturbed away from their ones/zeros, so that attention is far from
uniform and a wrong RoPE, bias or q/k norm shows in the logits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from museserve.engine.plan import ScheduledSequence, SchedulerPlan  # noqa: E402
from museserve.model.config import MuseConfig  # noqa: E402
from museserve.model.cpu_linear import PackedLinear, PackedTiedHead, weight_bytes  # noqa: E402
from museserve.model.layers import TiedLMHead  # noqa: E402
from museserve.model.loader import build_model  # noqa: E402
from museserve.model.muse import MuseForCausalLM  # noqa: E402
from museserve.model.rope_scaling import LinearRopeScaling, RopeScaling  # noqa: E402
from museserve.parallel.plan import replica_workers  # noqa: E402
from museserve.parallel.stage import StageRunner, build_stage_model  # noqa: E402
from museserve.runner.kv_pool import PagedKVPool  # noqa: E402
from museserve.runner.model_runner import ModelRunner  # noqa: E402
from tests.reference_kv_cache import SequenceKVCache, reference_logits  # noqa: E402

TOLERANCE = 1e-4
VOCAB = 1000
BLOCK = 16
SHAPE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.1,
}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0}
LLAMA3_ROPE |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 1024}  # 4K+ is stretched
# name -> (transformers model class, its config class, config changes)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {"rope_parameters": LLAMA3_ROPE}),
    "llama-tied": (
        "LlamaForCausalLM",
        "LlamaConfig",
        {"tie_word_embeddings": True, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}},
    ),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {"head_dim": 32, "tie_word_embeddings": True}),
}


def random_transformers_model(name: str, seed: int = 0):
    model_class, config_class, changes = ARCHITECTURES[name]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**SHAPE, **changes))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith("norm.weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif param_name.endswith(".bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model.float().eval()


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def pair(request, tmp_path_factory) -> tuple[object, MuseForCausalLM, Path]:
    """(transformers' model, ours built from its saved checkpoint, the checkpoint directory)."""
    theirs = random_transformers_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    theirs.save_pretrained(directory, safe_serialization=True)
    config = MuseConfig.from_hf_dict(json.loads((directory / "config.json").read_text()))
    ours = build_model(config, load_format="safetensors", path=directory)
    return theirs, ours, directory


@torch.inference_mode()
def hf_logits(theirs, tokens: list[int]) -> torch.Tensor:
    """transformers' float32 logits [len(tokens), vocab] of one sequence at positions 0..n-1."""
    return theirs(input_ids=torch.tensor([tokens]), use_cache=False).logits[0].float()


def random_tokens(count: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


class PagedRun:
    """Sequences driven through `ModelRunner` and a `PagedKVPool` as the engine's plans drive them:
    chunked prefill of each prompt in lockstep, then teacher-forced decode steps."""

    def __init__(self, model: MuseForCausalLM, sequences: dict[str, list[int]]) -> None:
        self.sequences = sequences
        self.blocks: dict[str, tuple[int, ...]] = {}
        first = 0
        for request_id, tokens in sequences.items():
            count = -(-len(tokens) // BLOCK)
            self.blocks[request_id] = tuple(range(first, first + count))
            first += count
        self.num_blocks = first
        pool = PagedKVPool(model.config, first, BLOCK, dtype=torch.float32, device=torch.device("cpu"))
        # plan -> logits of its sampling sequences; a test may route plans elsewhere (pipeline stages).
        self.forward: Callable[[SchedulerPlan], torch.Tensor] = ModelRunner(model, pool).execute

    def step(self, spans: dict[str, tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Computes tokens [start, end) of each named sequence; returns each one's logits at end - 1."""
        items = tuple(
            ScheduledSequence(rid, start, tuple(self.sequences[rid][start:end]), self.blocks[rid], samples=True)
            for rid, (start, end) in spans.items()
        )
        logits = self.forward(SchedulerPlan(items, ()))
        return {rid: logits[row] for row, rid in enumerate(spans)}

    def prefill(self, prompt_lens: dict[str, int], chunk: int) -> dict[str, list[tuple[int, torch.Tensor]]]:
        """Per sequence, (position, logits) at the end of each of its chunks."""
        out: dict[str, list[tuple[int, torch.Tensor]]] = {rid: [] for rid in prompt_lens}
        start = 0
        while start < max(prompt_lens.values()):
            spans = {rid: (start, min(start + chunk, n)) for rid, n in prompt_lens.items() if start < n}
            for rid, logits in self.step(spans).items():
                out[rid].append((spans[rid][1] - 1, logits))
            start += chunk
        return out


def assert_rows_match(ours: list[tuple[int, torch.Tensor]], reference: torch.Tensor) -> None:
    for position, logits in ours:
        torch.testing.assert_close(logits, reference[position], rtol=0, atol=TOLERANCE, msg=f"position {position}")


def test_one_shot_prefill_matches(pair) -> None:
    theirs, ours, _ = pair
    tokens = random_tokens(96, seed=1)
    with torch.inference_mode():
        mine = reference_logits(ours, torch.tensor(tokens), torch.arange(96), SequenceKVCache.for_model(ours.config))
    expected = hf_logits(theirs, tokens)
    torch.testing.assert_close(mine, expected, rtol=0, atol=TOLERANCE)
    assert torch.equal(mine.argmax(-1), expected.argmax(-1))


def test_chunked_paged_prefill_matches(pair) -> None:
    theirs, ours, _ = pair
    sequences = {"a": random_tokens(150, seed=2), "b": random_tokens(97, seed=3)}
    run = PagedRun(ours, sequences)
    chunks = run.prefill({rid: len(tokens) for rid, tokens in sequences.items()}, chunk=32)
    for rid, tokens in sequences.items():
        assert_rows_match(chunks[rid], hf_logits(theirs, tokens))


def test_paged_decode_beyond_4k_matches(pair) -> None:
    """A 4,200-token prompt prefilled in chunks, then batched paged decode beside a short one."""
    theirs, ours, _ = pair
    prompts, decode_steps = {"long": 4200, "short": 300}, 4
    sequences = {rid: random_tokens(n + decode_steps, seed=n) for rid, n in prompts.items()}
    run = PagedRun(ours, sequences)
    rows = run.prefill(prompts, chunk=1024)
    for step in range(decode_steps):
        spans = {rid: (n + step, n + step + 1) for rid, n in prompts.items()}
        for rid, logits in run.step(spans).items():
            rows[rid].append((spans[rid][0], logits))
    assert rows["long"][-1][0] == 4203
    for rid, tokens in sequences.items():
        assert_rows_match(rows[rid], hf_logits(theirs, tokens))


def test_pipeline_stages_match(pair) -> None:
    """Two pipeline stages built from the checkpoint (a tied head and its embedding on the last)."""
    theirs, ours, directory = pair
    stages = [spec for (spec,) in replica_workers(ours.config, 1, 2)]
    sequences = {"a": random_tokens(70, seed=4)}
    run = PagedRun(ours, sequences)
    models = [
        build_stage_model(spec, ours.config, load_format="safetensors", seed=0, path=str(directory),
                          dtype=torch.float32, device=torch.device("cpu"))
        for spec in stages
    ]  # fmt: skip
    first, last = (StageRunner(s, m, ours.config, run.num_blocks, BLOCK) for s, m in zip(stages, models, strict=True))
    run.forward = lambda plan: last.forward(plan, first.forward(plan, None))
    assert models[0].lm_head is None
    assert isinstance(models[1].lm_head, PackedTiedHead | PackedLinear)
    assert_rows_match(run.prefill({"a": 70}, chunk=24)["a"], hf_logits(theirs, sequences["a"]))


def test_config_round_trips_and_loads_in_transformers(pair) -> None:
    theirs, ours, _ = pair
    config = ours.config
    assert MuseConfig.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config
    assert MuseConfig.from_hf_dict(theirs.config.to_dict()) == config
    rebuilt = transformers.AutoConfig.for_model(**config.to_hf_dict())
    assert type(rebuilt) is type(theirs.config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(rebuilt)
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert set(model.state_dict()) - tied == set(ours.state_dict())


def test_tied_head_is_packed_and_equals_the_unpacked_one(tmp_path: Path) -> None:
    random_transformers_model("llama-tied").save_pretrained(tmp_path)
    config = MuseConfig.from_hf_dict(json.loads((tmp_path / "config.json").read_text()))
    packed = build_model(config, load_format="safetensors", path=tmp_path)
    dense = build_model(config, load_format="safetensors", path=tmp_path, cpu_gemm="torch")
    assert isinstance(packed.lm_head, PackedTiedHead) and type(dense.lm_head) is TiedLMHead
    assert packed.state_dict().keys() == dense.state_dict().keys()
    assert "lm_head.weight" not in packed.state_dict()
    linears = sum(m.weight.numel() for m in packed.modules() if isinstance(m, PackedLinear))
    assert weight_bytes(packed) - weight_bytes(dense) == 4 * (linears + VOCAB * config.hidden_size)
    hidden = torch.randn(32, config.hidden_size, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(packed.compute_logits(hidden), dense.compute_logits(hidden), rtol=1e-5, atol=1e-5)


def llama_dict(**changes) -> dict:
    return {**transformers.LlamaConfig(**SHAPE).to_dict(), **changes}


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"model_type": "mistral"}, "model_type"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.type"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope_parameters.rope_type"),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
            "rope_parameters.low_freq_factor",
        ),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
    ],
)
def test_refusals_name_their_key(changes: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: "):
        MuseConfig.from_hf_dict(llama_dict(**changes))


@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_served_rope_types_and_context(key: str) -> None:
    default = MuseConfig.from_hf_dict(llama_dict(**{key: {"rope_type": "default", "rope_theta": 5e5}}))
    assert default.rope_scaling is None
    linear = MuseConfig.from_hf_dict(llama_dict(max_position_embeddings=2048, **{key: {"type": "linear", "factor": 4}}))
    assert linear.rope_scaling == LinearRopeScaling(4.0)
    assert linear.max_position_embeddings == 2048  # the checkpoint's own positions, not 4x
    llama3 = MuseConfig.from_hf_dict(llama_dict(**{key: LLAMA3_ROPE}))
    assert llama3.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 1024)
    # Qwen2.5 checkpoints carry a window size with the window switched off.
    qwen = {**transformers.Qwen2Config(**SHAPE).to_dict(), "sliding_window": 4096, "use_sliding_window": False}
    assert MuseConfig.from_hf_dict(qwen).qkv_bias
