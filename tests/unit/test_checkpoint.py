"""A checkpoint directory (config.json, *.safetensors, tokenizer.json) serves like the
dummy weights it was saved from."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from museserve.config import PoolConfig, parse_config
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import pool_model
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.loading import load_pool_model
from tests.support import prepared_request

BUNDLED_TOKENIZER = Path(__file__).resolve().parents[2] / "platform/museserve/preprocess/assets/muse-tokenizer.json"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("muse-tiny-checkpoint")
    model = load_pool_model(PoolConfig(name="source", model={"seed": 7}), MuseTokenizer.load(None).vocab_size)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    half = len(state) // 2
    names = sorted(state)
    save_file({n: state[n] for n in names[:half]}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({n: state[n] for n in names[half:]}, str(directory / "model-00002-of-00002.safetensors"))
    (directory / "config.json").write_text(json.dumps(model.config.to_hf_dict()))
    shutil.copy(BUNDLED_TOKENIZER, directory / "tokenizer.json")
    return directory


async def greedy_text(pool: PoolConfig, prompt: list[int]) -> str:
    engine = build_engine(pool, MuseFormat(MuseTokenizer.load(None)))
    try:
        return "".join(
            [
                chunk.text
                async for chunk in engine.generate(
                    prepared_request(f"r{random.random()}", prompt, max_output_tokens=10)
                )
            ]
        )
    finally:
        engine.shutdown()


async def test_a_saved_checkpoint_generates_what_its_source_weights_do(checkpoint: Path):
    prompt = [random.Random(0).randrange(32, 8000) for _ in range(20)]
    source = PoolConfig(
        name="p",
        model={"seed": 7},
        engine={"context_length": 1024, "max_output_tokens": 64, "default_max_output_tokens": 16},
    )
    loaded = PoolConfig(
        name="p",
        model={"load_format": "safetensors", "path": str(checkpoint)},
        engine={"context_length": 1024, "max_output_tokens": 64, "default_max_output_tokens": 16},
    )
    assert await greedy_text(loaded, prompt) == await greedy_text(source, prompt)


def test_a_checkpoint_brings_its_own_tokenizer(checkpoint: Path):
    """A Muse checkpoint's tokenizer.json (it holds the control tokens) serves the Muse format;
    `preprocess.tokenizer` is only for dummy weights and checkpoints without one."""
    config = parse_config(
        {
            "preprocess": {"tokenizer": "/elsewhere/tokenizer.json"},
            "pools": [{"name": "from-disk", "model": {"load_format": "safetensors", "path": str(checkpoint)}}],
        }
    )
    model = pool_model(config.pool("from-disk"), config.preprocess.media, config.preprocess.tokenizer)
    assert isinstance(model.chat_format, MuseFormat)
    assert model.chat_format.tokenizer.source == str(checkpoint)
    assert model.chat_format.tokenizer.vocab_size == 8192
