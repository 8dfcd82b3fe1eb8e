"""A model replica's parts, assembled: the pool's executor (in this process, or across Ray
workers when the pool asks for tensor or pipeline parallelism), the device runner that steps
it, and the engine whose policy drives them. The Serve deployment and tests build engines
here; the engine itself imports no executor."""

from __future__ import annotations

from museserve.config import MediaLimits, PoolConfig
from museserve.config.context_window import context_window
from museserve.engine.engine import MuseEngine
from museserve.engine.plan import Executor
from museserve.lora.manager import AdapterManager
from museserve.lora.metrics import AdapterRecorder
from museserve.metrics import MetricsRecorder
from museserve.preprocess.chat_format import ChatFormat
from museserve.runner.device import DeviceRunner
from museserve.runner.draft import DraftProposer
from museserve.runner.loading import draft_runner, local_runner, pool_architecture
from museserve.runner.model_runner import ModelRunner
from museserve.runner.ngram import NgramProposer
from museserve.runner.proposer import Proposer


def build_engine(
    pool: PoolConfig,
    chat_format: ChatFormat,
    *,
    media: MediaLimits | None = None,
    metrics: MetricsRecorder | None = None,
    executor: Executor | None = None,
    adapter_metrics: AdapterRecorder | None = None,
) -> MuseEngine:
    """A pool's engine over its executor (`pool_executor`, built on the device thread), or over
    `executor` when one is given. `media`: the preprocess tier's limits; a dummy model then gets
    projectors of their feature dims, a checkpoint's are checked against them. None: a
    text-only dummy model. The engine checks requests against the pool's context window, the one
    the preprocess tier checked and the executor's KV pool is sized for."""
    vocab_size = chat_format.tokenizer.vocab_size
    window = context_window(pool, pool_architecture(pool, vocab_size, media))

    def build() -> Executor:
        return executor if executor is not None else pool_executor(pool, vocab_size, media)

    def proposer(built: Executor) -> Proposer | None:
        return pool_proposer(pool, built, vocab_size, media)

    runner = DeviceRunner(build, chat_format, pool.name, proposer)
    adapters = pool_adapters(pool, runner, adapter_metrics)
    return MuseEngine(pool, chat_format, runner, metrics, context_window=window.tokens, adapters=adapters)


def pool_adapters(pool: PoolConfig, runner: DeviceRunner, metrics: AdapterRecorder | None) -> AdapterManager | None:
    """The replica's LoRA adapters over its executor's slots; None where the pool serves none."""
    lora = getattr(runner.executor, "lora", None)
    if lora is None:
        return None

    async def place(slot: int, adapter) -> None:
        await runner.call(lora.write, slot, adapter)

    return AdapterManager(pool.name, pool.lora, runner.executor.model.config, place, metrics)


def pool_executor(pool: PoolConfig, vocab_size: int, media: MediaLimits | None = None) -> Executor:
    """The pool's model in this process, or across Ray workers when `pool.parallel` asks for them."""
    if pool.parallel.world_size == 1:
        return local_runner(pool, vocab_size, media)
    from museserve.parallel.executor import RayExecutor  # imports Ray only for parallel pools

    return RayExecutor(pool, pool_architecture(pool, vocab_size, media))


def pool_proposer(pool: PoolConfig, executor: Executor, vocab_size: int, media: MediaLimits | None) -> Proposer | None:
    """What proposes tokens for the pool's speculative decoding (`engine.speculative`), if anything."""
    spec = pool.engine.speculative
    if spec.method == "ngram":
        return NgramProposer(spec.prompt_lookup_max, spec.prompt_lookup_min)
    if spec.method == "draft":
        if not isinstance(executor, ModelRunner):
            raise ValueError(f"pool {pool.name}: a draft model runs beside a model in this process only")
        return DraftProposer(draft_runner(pool, executor, vocab_size, media))
    return None
