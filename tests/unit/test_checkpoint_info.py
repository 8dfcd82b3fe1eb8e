"""`read_checkpoint` on Hugging Face directories written here with transformers' own save_pretrained:
a small random Llama, SmolLM2's tokenizer (from its GGUF) with its chat template, a generation config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

transformers = pytest.importorskip("transformers")

from museserve.checkpoint import CheckpointError, CheckpointInfo, read_checkpoint  # noqa: E402
from museserve.config import MediaLimits, PoolConfig  # noqa: E402
from museserve.preprocess.pool_model import pool_model  # noqa: E402
from tests.real_model import SMOLLM2_GGUF, SMOLLM2_IM_END_ID  # noqa: E402

ENDOFTEXT_ID = 0
TOOL_TEMPLATE = "{% for m in messages %}[tool] {{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def smollm2() -> CheckpointInfo:
    return read_checkpoint(SMOLLM2_GGUF, "gguf")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, smollm2: CheckpointInfo) -> Path:
    """config.json + model.safetensors, tokenizer.json + tokenizer_config.json + chat_template.jinja,
    generation_config.json sampling with two stop ids."""
    directory = tmp_path_factory.mktemp("hf-llama")
    config = transformers.LlamaConfig(
        vocab_size=smollm2.hf_config["vocab_size"], hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, eos_token_id=SMOLLM2_IM_END_ID,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(smollm2.tokenizer_json),
        chat_template=smollm2.chat_template,
        **smollm2.special_tokens,
    )
    tokenizer.save_pretrained(directory)
    generation = transformers.GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.9, top_k=20, eos_token_id=[SMOLLM2_IM_END_ID, ENDOFTEXT_ID]
    )
    generation.save_pretrained(directory)
    return directory


@pytest.fixture
def copy(saved: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def _edit_json(file: Path, **changes: object) -> None:
    """Set keys; a value of None removes the key."""
    data = json.loads(file.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    file.write_text(json.dumps(data))


def test_fields_read_from_a_saved_directory(saved: Path, smollm2: CheckpointInfo) -> None:
    info = read_checkpoint(str(saved), "safetensors")
    assert info.source == saved and info.load_format == "safetensors"
    assert info.hf_config == json.loads((saved / "config.json").read_text())
    assert info.hf_config["model_type"] == "llama" and info.hf_config["hidden_size"] == 16
    assert info.tokenizer_json == (saved / "tokenizer.json").read_text()
    assert info.chat_template == smollm2.chat_template
    assert info.special_tokens == smollm2.special_tokens
    assert info.eos_token_ids == (ENDOFTEXT_ID, SMOLLM2_IM_END_ID)  # union of both files, deduplicated, sorted
    assert info.generation_defaults == {"temperature": 0.7, "top_p": 0.9, "top_k": 20}


def test_greedy_generation_config_gives_no_defaults(copy: Path) -> None:
    _edit_json(copy / "generation_config.json", do_sample=False, repetition_penalty=1.1)
    assert read_checkpoint(str(copy), "safetensors").generation_defaults == {}
    _edit_json(copy / "generation_config.json", do_sample=True)
    assert read_checkpoint(str(copy), "safetensors").generation_defaults["repetition_penalty"] == 1.1


def test_list_form_chat_template_uses_default(copy: Path, smollm2: CheckpointInfo) -> None:
    (copy / "chat_template.jinja").unlink()
    templates = [
        {"name": "tool_use", "template": TOOL_TEMPLATE},
        {"name": "default", "template": smollm2.chat_template},
    ]
    _edit_json(copy / "tokenizer_config.json", chat_template=templates)
    assert read_checkpoint(str(copy), "safetensors").chat_template == smollm2.chat_template


def test_chat_template_jinja_wins_over_tokenizer_config(copy: Path, smollm2: CheckpointInfo) -> None:
    _edit_json(copy / "tokenizer_config.json", chat_template=TOOL_TEMPLATE)
    assert read_checkpoint(str(copy), "safetensors").chat_template == smollm2.chat_template
    (copy / "chat_template.jinja").unlink()
    assert read_checkpoint(str(copy), "safetensors").chat_template == TOOL_TEMPLATE


def test_special_tokens_as_added_token_dicts(copy: Path) -> None:
    _edit_json(copy / "tokenizer_config.json", eos_token={"content": "<|endoftext|>", "special": True}, bos_token=None)
    _edit_json(copy / "generation_config.json", eos_token_id=None)
    _edit_json(copy / "config.json", eos_token_id=None)
    info = read_checkpoint(str(copy), "safetensors")
    assert info.special_tokens["eos_token"] == "<|endoftext|>" and "bos_token" not in info.special_tokens
    assert info.eos_token_ids == (ENDOFTEXT_ID,)  # resolved through tokenizer.json


def test_missing_config_json_is_named(copy: Path) -> None:
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json is missing"):
        read_checkpoint(str(copy), "safetensors")


def test_no_eos_anywhere_names_the_keys(copy: Path) -> None:
    """Read as it is (a Muse-format tokenizer brings its own end tokens), refused as a chat format."""
    _edit_json(copy / "generation_config.json", eos_token_id=None)
    _edit_json(copy / "config.json", eos_token_id=None)
    _edit_json(copy / "tokenizer_config.json", eos_token=None)
    assert read_checkpoint(str(copy), "safetensors").eos_token_ids == ()
    pool = PoolConfig(name="p", model={"load_format": "safetensors", "path": str(copy)})
    with pytest.raises(CheckpointError) as error:
        pool_model(pool, MediaLimits())
    message = str(error.value)
    for key in ("generation_config.json eos_token_id", "config.json eos_token_id", "tokenizer_config.json eos_token"):
        assert key in message
    assert str(copy) in message


def test_eos_token_outside_the_vocabulary_is_named(copy: Path) -> None:
    _edit_json(copy / "tokenizer_config.json", eos_token="<|not-a-token|>")
    with pytest.raises(CheckpointError, match=r"eos_token '<\|not-a-token\|>' is not in the vocabulary"):
        read_checkpoint(str(copy), "safetensors")


def test_directory_without_tokenizer(copy: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        (copy / name).unlink()
    _edit_json(copy / "config.json", eos_token_id=None)
    info = read_checkpoint(str(copy), "safetensors")
    assert (info.tokenizer_json, info.chat_template, info.eos_token_ids) == (None, None, ())
    assert info.special_tokens == {} and info.generation_defaults == {}


def test_wrong_kind_of_path_is_an_error(saved: Path, smollm2: CheckpointInfo) -> None:
    with pytest.raises(CheckpointError, match="needs a .gguf file"):
        read_checkpoint(str(saved), "gguf")
    with pytest.raises(CheckpointError, match="needs a Hugging Face directory"):
        read_checkpoint(str(smollm2.source), "safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(str(saved / "absent"), "safetensors")


def test_reading_checkpoints_never_imports_torch(saved: Path) -> None:
    script = (
        "import sys\n"
        "from museserve.checkpoint import read_checkpoint\n"
        "from museserve.checkpoint.gguf import gguf_tensors\n"
        f"read_checkpoint({str(saved)!r}, 'safetensors')\n"
        f"info = read_checkpoint({SMOLLM2_GGUF!r}, 'gguf')\n"
        "name, shape, read = next(iter(gguf_tensors(info.source)))\n"
        "assert read().shape == shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "platform")},
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()
