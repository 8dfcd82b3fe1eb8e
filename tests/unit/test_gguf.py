"""GGUF checkpoints: the real SmolLM2 file against transformers' own GGUF loader and tokenizer,
and tiny files written here for tensor naming and for the errors that name a metadata key."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

from museserve.checkpoint import CheckpointError, CheckpointInfo, read_checkpoint  # noqa: E402
from museserve.checkpoint.gguf import gguf_tensors  # noqa: E402
from museserve.checkpoint.gguf_tokenizer import build_tokenizer  # noqa: E402
from museserve.model.config import MuseConfig  # noqa: E402
from museserve.model.loader import build_model  # noqa: E402
from tests.real_model import SMOLLM2_GGUF, SMOLLM2_IM_END_ID  # noqa: E402

PLAIN_TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "def square(x):\n    return x ** x  # squared\n\nprint(square(x=y))\n",
    "naïve café, Straße, 日本語のテキスト, Ελληνικά, emoji 🙂👍🏽 and a lone \u200b",
    "  leading   runs\n\n\n\tof whitespace  \r\n trailing   ",
    "It's, I'm, we'll, they'd, you've, she's -- don't",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    '{"key": [true, null], "url": "https://example.com/a?b=c&d=e"}',
]
# SmolLM2 splits every numeral (\p{N}) apart before byte-level BPE, as llama.cpp does for
# `tokenizer.ggml.pre == "smollm"` and SmolLM2's own tokenizer.json does; transformers' GGUF
# tokenizer does not know "smollm" and uses GPT-2's split, which keeps " 12" or " ½" together.
NUMERAL_TEXTS = ["In 2024, 365 days;  12 34  5551234", "3.14159 ²³ ½ ٣٤٥ Ⅻ ①②", "v1.2.3-rc4"]


@pytest.fixture(scope="module")
def info() -> CheckpointInfo:
    return read_checkpoint(SMOLLM2_GGUF, "gguf")


@pytest.fixture(scope="module")
def theirs_model(info: CheckpointInfo):
    return transformers.AutoModelForCausalLM.from_pretrained(
        info.source.parent, gguf_file=info.source.name, dtype=torch.float32
    )


@pytest.fixture(scope="module")
def theirs_tokenizer(info: CheckpointInfo):
    return transformers.AutoTokenizer.from_pretrained(info.source.parent, gguf_file=info.source.name)


@pytest.fixture(scope="module")
def ours_tokenizer(info: CheckpointInfo) -> Tokenizer:
    assert info.tokenizer_json is not None
    return Tokenizer.from_str(info.tokenizer_json)


def test_weights_equal_transformers_gguf_loader(info: CheckpointInfo, theirs_model) -> None:
    config = MuseConfig.from_hf_dict(dict(info.hf_config))
    ours = dict(build_model(config, load_format="gguf", path=info.source, cpu_gemm="torch").named_parameters())
    theirs = dict(theirs_model.named_parameters())  # tied: lm_head is embed_tokens, listed once
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_config_matches_transformers(info: CheckpointInfo, theirs_model) -> None:
    theirs = theirs_model.config
    for key in (
        "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "head_dim", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings",
        "hidden_act", "bos_token_id", "eos_token_id",
    ):  # fmt: skip
        assert info.hf_config[key] == getattr(theirs, key), key
    assert info.hf_config["rope_theta"] == theirs.rope_parameters["rope_theta"] == 100_000.0
    assert info.hf_config["rope_scaling"] is None and theirs.rope_parameters["rope_type"] == "default"
    assert (info.hf_config["num_hidden_layers"], info.hf_config["num_key_value_heads"]) == (30, 3)


@pytest.mark.parametrize("text", PLAIN_TEXTS)
def test_tokenizer_encodes_like_transformers(ours_tokenizer: Tokenizer, theirs_tokenizer, text: str) -> None:
    ids = ours_tokenizer.encode(text).ids
    assert ids == theirs_tokenizer.encode(text, add_special_tokens=False)
    assert ours_tokenizer.decode(ids, skip_special_tokens=False) == text


@pytest.mark.parametrize("text", NUMERAL_TEXTS)
def test_tokenizer_splits_every_numeral(ours_tokenizer: Tokenizer, theirs_tokenizer, text: str) -> None:
    ids = ours_tokenizer.encode(text).ids
    assert ours_tokenizer.decode(ids) == text
    # Ours: transformers' encoding of the text cut before and after every numeral.
    parts: list[str] = []
    for char in text:
        if char.isnumeric() or not parts or parts[-1][-1].isnumeric():
            parts.append(char)
        else:
            parts[-1] += char
    assert ids == [i for part in parts for i in theirs_tokenizer.encode(part, add_special_tokens=False)]


def test_tokenizer_digit_split_differs_from_transformers_gguf(ours_tokenizer: Tokenizer, theirs_tokenizer) -> None:
    # Where the two disagree, spelled out: GPT-2's split keeps a space with the digits after it.
    assert ours_tokenizer.encode("  12 34").tokens == ["ĠĠ", "1", "2", "Ġ", "3", "4"]
    assert theirs_tokenizer.tokenize("  12 34") == ["Ġ", "Ġ", "1", "2", "Ġ", "3", "4"]


def test_chat_template_specials_and_stop_ids(info: CheckpointInfo, ours_tokenizer: Tokenizer) -> None:
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.eos_token_ids == (SMOLLM2_IM_END_ID,)
    assert ours_tokenizer.id_to_token(SMOLLM2_IM_END_ID) == "<|im_end|>"
    assert info.special_tokens == {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
    }
    assert info.generation_defaults == {}


# --- tiny files written here ------------------------------------------------------------------

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 8, 2, 1, 4, 16
TOKENS = ["a", "b", "ab", "Ġ", "<|end|>", "<think>"]


def _weights(arch: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {
        "model.embed_tokens.weight": (len(TOKENS), HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "model.layers.0.input_layernorm.weight": (HIDDEN,),
        "model.layers.0.post_attention_layernorm.weight": (HIDDEN,),
        "model.layers.0.self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
        "model.layers.0.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        "model.layers.0.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        "model.layers.0.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
        "model.layers.0.mlp.gate_proj.weight": (FFN, HIDDEN),
        "model.layers.0.mlp.up_proj.weight": (FFN, HIDDEN),
        "model.layers.0.mlp.down_proj.weight": (HIDDEN, FFN),
    }
    if arch == "qwen2":
        shapes |= {
            f"model.layers.0.self_attn.{p}_proj.bias": (n * HEAD_DIM,)
            for p, n in zip("qkv", (HEADS, 1, 1), strict=True)
        }
    if arch == "qwen3":
        shapes |= {f"model.layers.0.self_attn.{p}_norm.weight": (HEAD_DIM,) for p in "qk"}
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:  # convert_hf_to_gguf.py's LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path, arch: str = "llama", *, weights: dict[str, np.ndarray] | None = None, **metadata) -> Path:
    """A one-layer GGUF; `metadata` overrides keys (dots spelled `__`), None removes one."""
    values = {
        f"{arch}.block_count": 1, f"{arch}.context_length": 64, f"{arch}.embedding_length": HIDDEN,
        f"{arch}.feed_forward_length": FFN, f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS, f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.token_type": [1, 1, 1, 1, 3, 4],
        "tokenizer.ggml.eos_token_id": 4,
    } | {key.replace("__", "."): value for key, value in metadata.items()}  # fmt: skip
    writer = gguf.GGUFWriter(path, arch)
    for key, value in values.items():
        if value is not None:
            element = gguf.GGUFValueType.get_type(value[0]) if isinstance(value, list) else None
            writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value), sub_type=element)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch == "gpt2" else gguf.MODEL_ARCH[arch.upper()], 1)
    for name, array in (weights if weights is not None else _weights(arch)).items():
        if arch == "llama" and name.split(".")[-2] in ("q_proj", "k_proj"):
            array = _llama_cpp_permute(array, HEADS if "q_proj" in name else KV_HEADS)
        writer.add_tensor(name_map.get_name(name, try_suffixes=(".weight", ".bias")) or name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_tensors_come_back_under_hf_names_with_original_values(tmp_path: Path, arch: str) -> None:
    weights = _weights(arch)
    read = {name: (shape, load) for name, shape, load in gguf_tensors(write_gguf(tmp_path / "m.gguf", arch))}
    assert set(read) == set(weights)
    for name, (shape, load) in read.items():
        values = load()
        assert shape == weights[name].shape and values.flags.c_contiguous and values.flags.writeable
        np.testing.assert_array_equal(values, weights[name], err_msg=name)
    config = read_checkpoint(str(tmp_path / "m.gguf"), "gguf").hf_config
    assert config["model_type"] == arch and config["tie_word_embeddings"]
    assert config["attention_bias"] == (arch == "qwen2")


def test_stop_ids_sampling_and_rope_scaling_from_metadata(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        tokenizer__ggml__eot_token_id=5,
        general__sampling__temp=0.6,
        general__sampling__top_k=20,
        llama__rope__scaling__type="linear",
        llama__rope__scaling__factor=2.0,
    )
    info = read_checkpoint(str(path), "gguf")
    assert info.eos_token_ids == (4, 5)
    assert info.generation_defaults == {"temperature": 0.6, "top_k": 20}
    assert info.hf_config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize(
    ("arch", "metadata", "extra_tensor", "key"),
    [
        ("gpt2", {}, None, "general.architecture 'gpt2'"),
        ("llama", {"tokenizer__ggml__model": "llama"}, None, "tokenizer.ggml.model 'llama'"),
        ("llama", {"tokenizer__ggml__pre": "falcon"}, None, "tokenizer.ggml.pre 'falcon'"),
        ("llama", {"tokenizer__ggml__eos_token_id": None}, None, "tokenizer.ggml.eos_token_id, tokenizer.ggml.eot"),
        ("llama", {"llama__rope__scaling__type": "longrope"}, None, "llama.rope.scaling.type 'longrope'"),
        ("llama", {}, "rope_freqs.weight", "rope_freqs.weight"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, arch: str, metadata: dict, extra_tensor: str | None, key: str) -> None:
    weights = _weights("llama") | ({extra_tensor: np.ones(HEAD_DIM // 2, np.float32)} if extra_tensor else {})
    path = write_gguf(tmp_path / "bad.gguf", arch, weights=weights, **metadata)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as error:
        read_checkpoint(str(path), "gguf")
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("smollm", ["Ġab", "'s", "Ġ", "1", "2", "3", "4", "Ġ", "Â½"]),
        ("gpt-2", ["Ġab", "'s", "Ġ1234", "ĠÂ½"]),
        ("llama-bpe", ["Ġab", "'s", "Ġ", "123", "4", "Ġ", "Â½"]),
        ("qwen2", ["Ġab", "'s", "Ġ", "1", "2", "3", "4", "Ġ", "Â½"]),
        ("default", ["Ġab", "'", "s", "Ġ", "123", "4", "Ġ", "Â½"]),
    ],
)
def test_pre_tokenizer_follows_llama_cpp(pre: str, pieces: list[str]) -> None:
    metadata = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": TOKENS,
                "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.token_type": [1, 1, 1, 1, 3, 4]}  # fmt: skip
    tokenizer = build_tokenizer(metadata, Path("t.gguf"))
    assert [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(" ab's 1234 ½")] == pieces
    assert tokenizer.encode("<|end|>ab<think>").tokens == ["<|end|>", "ab", "<think>"]
    assert tokenizer.decode(tokenizer.encode("<|end|>ab").ids, skip_special_tokens=True) == "ab"
