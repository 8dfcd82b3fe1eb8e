"""At replica start the window is derived from the same function: too small a cache refuses
before any weight loads, the KV pool holds exactly the window's blocks in kv_cache_dtype (also a
pipeline stage's), and the engine checks requests against that window."""

from __future__ import annotations

import pytest
import torch

from museserve.config import PoolConfig
from museserve.config.context_window import WindowBound, context_window
from museserve.errors import InvalidArgument
from museserve.model.config import MuseConfig
from museserve.parallel.plan import replica_workers
from museserve.parallel.stage import StageRunner, build_stage_model
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner import loading
from tests.support import prepared_request

WINDOW = 192  # tokens: 12 blocks of 16 at 512 bytes (tiny, float32) or 24 at 256 (bfloat16)


def pool(kv_cache_dtype: str = "model", **engine: int) -> PoolConfig:
    engine = {"context_length": 4096, "max_output_tokens": 64, "default_max_output_tokens": 8,
              "kv_cache_bytes": WINDOW * 512, "min_context_per_request": 128, "stream_interval_ms": 0,
              "kv_cache_dtype": kv_cache_dtype, **engine}  # fmt: skip
    return PoolConfig(name="muse-test", model={"device": "cpu"}, engine=engine)


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def test_too_small_a_cache_refuses_to_start_before_loading_weights(tokenizer, monkeypatch) -> None:
    def never(*args, **kwargs):
        raise AssertionError("weights were loaded for a replica that cannot start")

    monkeypatch.setattr(loading, "build_pool_model", never)
    with pytest.raises(ValueError) as refused:
        loading.local_runner(pool(min_context_per_request=1024), tokenizer.vocab_size)
    message = str(refused.value)
    assert "pool muse-test: engine.kv_cache_bytes (98304) holds 192 tokens" in message
    assert "engine.min_context_per_request needs 1024" in message


@pytest.mark.parametrize(
    ("kv_cache_dtype", "dtype", "tokens"), [("model", torch.float32, 192), ("bfloat16", torch.bfloat16, 384)]
)
def test_the_runner_allocates_the_windows_blocks_in_the_kv_dtype(tokenizer, kv_cache_dtype, dtype, tokens) -> None:
    config = pool(kv_cache_dtype)
    window = context_window(config, MuseConfig.named("tiny", vocab_size=tokenizer.vocab_size))
    assert (window.tokens, window.bound) == (tokens, WindowBound.KV_CAPACITY)
    runner = loading.local_runner(config, tokenizer.vocab_size)
    assert runner.num_blocks == window.num_blocks == tokens // 16
    assert runner.pool.keys[0].dtype == dtype
    assert runner.pool.num_bytes <= config.engine.kv_cache_bytes + 2 * 2 * 2 * 16 * 4  # plus one scratch slot


def test_a_pipeline_stage_allocates_its_kv_in_the_kv_dtype(tokenizer) -> None:
    arch = MuseConfig.named("tiny", vocab_size=tokenizer.vocab_size)
    spec = replica_workers(arch, 1, 2)[1][0]
    model = build_stage_model(spec, arch, load_format="dummy", seed=0, path=None, dtype=torch.float32,
                              device=torch.device("cpu"), cpu_gemm="torch")  # fmt: skip
    stage = StageRunner(spec, model, arch, 12, 16, kv_dtype=torch.bfloat16)
    assert stage.dtype == torch.float32 and stage.pool.keys[0].dtype == torch.bfloat16
    assert len(stage.pool.keys) == 1  # its own layer of the two


async def test_the_engine_checks_requests_against_the_window(tokenizer) -> None:
    engine = build_engine(pool(), MuseFormat(tokenizer))
    try:
        assert engine.context_window == WINDOW
        with pytest.raises(InvalidArgument) as refused:  # a preprocess tier that checked another window
            async for _ in engine.generate(prepared_request("long", [40] * WINDOW)):
                pass
        assert refused.value.field == "messages" and "context window of 192" in str(refused.value)
        chunks = [c async for c in engine.generate(prepared_request("fits", [40] * (WINDOW - 4), max_output_tokens=64))]
        assert chunks[-1].usage.output_tokens == 4  # clamped at the window: ends for length
    finally:
        engine.shutdown()
