from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import torch

from museserve import errors
from museserve.config import MuseServeConfig, PoolConfig, parse_config
from museserve.domain import (
    ChatRequest,
    ChatResult,
    Finish,
    FinishReason,
    Message,
    Mode,
    ModeParams,
    ReasoningDelta,
    Role,
    SamplingParams,
    StreamEvent,
    TextDelta,
    TextPart,
    Usage,
)
from museserve.engine.engine import MuseEngine
from museserve.engine.plan import SchedulerPlan
from museserve.engine.stats import RequestPhase
from museserve.gateway.gateway import Gateway
from museserve.messages import GenerationChunk, PreparedRequest, PromptCount
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from museserve.runner.loading import local_runner
from museserve.runner.model_runner import ModelRunner

POOL_NAME = "muse-tiny"
CONFIG_DATA: dict[str, Any] = {
    "pools": [
        {
            "name": POOL_NAME,
            "model": {"size": "tiny", "load_format": "dummy", "seed": 0},
            "engine": {
                "context_length": 512,
                "max_output_tokens": 64,
                "default_max_output_tokens": 8,
                "default_thinking_budget": 8,
                "stream_interval_ms": 0,
                "max_running_requests": 2,
                "max_waiting_requests": 1,
            },
        }
    ],
    "server": {"request_timeout_s": 30},
}
CONFIG = parse_config(CONFIG_DATA)


class PreprocessAdapter:
    """The PreprocessClient protocol over an in-process Preprocessor."""

    def __init__(
        self,
        config: MuseServeConfig,
        preprocessor: Preprocessor,
        rewrite: Callable[[PreparedRequest], PreparedRequest] = lambda p: p,
    ):
        self._config = config
        self._preprocessor = preprocessor
        self._rewrite = rewrite
        self.prepare_calls = 0
        self.count_calls = 0

    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        self.prepare_calls += 1
        return self._rewrite(self._preprocessor.prepare(request, self._config.pool(pool)))

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        self.count_calls += 1
        return self._preprocessor.count(request, self._config.pool(pool))


class EnginePool:
    """The PoolClient protocol over an in-process MuseEngine."""

    def __init__(self, engine: MuseEngine):
        self.engine = engine

    def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        return self.engine.generate(request)


class UnfinishedPool:
    """A pool whose stream ends without a finish chunk."""

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        yield GenerationChunk(text="partial", num_new_tokens=1)
        yield GenerationChunk(text=" answer", num_new_tokens=1)


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def preprocessor(tokenizer: MuseTokenizer) -> Preprocessor:
    return Preprocessor(PoolModel.muse(tokenizer), CONFIG.preprocess.media, CONFIG.server.request_timeout_s)


@pytest.fixture
def engine(tokenizer: MuseTokenizer) -> Iterator[MuseEngine]:
    # One per test: its semaphore belongs to the event loop that first waits on it.
    eng = build_engine(CONFIG.pools[0], MuseFormat(tokenizer))
    yield eng
    eng.shutdown()


@pytest.fixture
def prep(preprocessor: Preprocessor) -> PreprocessAdapter:
    return PreprocessAdapter(CONFIG, preprocessor)


@pytest.fixture
def gateway(prep: PreprocessAdapter, engine: MuseEngine) -> Gateway:
    return Gateway(CONFIG, prep, {POOL_NAME: EnginePool(engine)})


def chat_request(
    text: str = "Tell me a story",
    request_id: str = "req-1",
    model: str = "",
    mode: ModeParams | None = None,
    **sampling: Any,
) -> ChatRequest:
    return ChatRequest(
        request_id=request_id,
        messages=(Message(Role.USER, (TextPart(text),)),),
        model=model,
        sampling=SamplingParams(**sampling),
        mode=mode or ModeParams(),
    )


async def collect(gateway: Gateway, request: ChatRequest) -> list[StreamEvent]:
    return [event async for event in gateway.stream(request)]


def fold(events: list[StreamEvent]) -> ChatResult:
    usage = next(e for e in events if isinstance(e, Usage))
    finish = events[-1]
    assert isinstance(finish, Finish)
    return ChatResult(
        text="".join(e.text for e in events if isinstance(e, TextDelta)),
        reasoning="".join(e.text for e in events if isinstance(e, ReasoningDelta)),
        tool_calls=(),
        usage=usage,
        finish_reason=finish.reason,
        model=finish.model,
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout_s} s")
        await asyncio.sleep(0.01)


# ---- streams ----


async def test_stream_event_order(gateway: Gateway) -> None:
    events = await collect(gateway, chat_request(temperature=0.0, max_output_tokens=20))
    assert isinstance(events[-1], Finish)
    assert isinstance(events[-2], Usage)
    assert sum(isinstance(e, Usage) for e in events) == 1
    assert sum(isinstance(e, Finish) for e in events) == 1
    deltas = events[:-2]
    assert deltas and all(isinstance(e, TextDelta) and e.text for e in deltas)
    assert events[-1] == Finish(FinishReason.LENGTH, POOL_NAME)
    usage = events[-2]
    assert isinstance(usage, Usage)
    assert usage.output_tokens == 20
    assert usage.reasoning_tokens == 0


async def test_thinking_stream_has_reasoning_first(gateway: Gateway) -> None:
    request = chat_request(temperature=0.0, max_output_tokens=5, mode=ModeParams(Mode.THINKING, thinking_budget=6))
    events = await collect(gateway, request)
    kinds = [type(e) for e in events]
    assert kinds[-2:] == [Usage, Finish]
    assert ReasoningDelta in kinds
    first_text = kinds.index(TextDelta) if TextDelta in kinds else len(kinds) - 2
    assert all(k is ReasoningDelta for k in kinds[:first_text])
    assert ReasoningDelta not in kinds[first_text:]
    usage = events[-2]
    assert isinstance(usage, Usage)
    assert usage.reasoning_tokens == 7  # the budget and the closing marker


async def test_chat_folds_the_stream(gateway: Gateway) -> None:
    request = chat_request(temperature=0.0, max_output_tokens=24, mode=ModeParams(Mode.THINKING, thinking_budget=5))
    streamed = fold(await collect(gateway, request))
    result = await gateway.chat(request)
    assert result == streamed
    assert result.model == POOL_NAME
    assert result.reasoning and result.text


async def test_usage_counts_the_prompt(gateway: Gateway, preprocessor: Preprocessor) -> None:
    request = chat_request(temperature=0.0)
    result = await gateway.chat(request)
    assert result.usage.prompt_tokens == preprocessor.count(request, CONFIG.pools[0]).prompt_tokens
    assert result.usage.output_tokens == 8  # the pool's default
    assert result.finish_reason is FinishReason.LENGTH


async def test_named_model_is_served(gateway: Gateway) -> None:
    result = await gateway.chat(chat_request(model=POOL_NAME, temperature=0.0, max_output_tokens=2))
    assert result.model == POOL_NAME


async def test_unknown_model(gateway: Gateway, prep: PreprocessAdapter) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        await gateway.chat(chat_request(model="muse-huge"))
    assert info.value.field == "model"
    assert POOL_NAME in info.value.message
    with pytest.raises(errors.InvalidArgument):
        await gateway.count_tokens(chat_request(model="muse-huge"))
    assert prep.prepare_calls == prep.count_calls == 0


async def test_validation_runs_before_preprocess(gateway: Gateway, prep: PreprocessAdapter) -> None:
    empty = ChatRequest(request_id="r", messages=(Message(Role.USER, (TextPart("  "),)),))
    with pytest.raises(errors.InvalidArgument) as info:
        await collect(gateway, empty)
    assert info.value.field == "messages[0].content"
    with pytest.raises(errors.InvalidArgument):
        await gateway.count_tokens(empty)
    with pytest.raises(errors.InvalidArgument) as info:
        await gateway.chat(chat_request(max_output_tokens=65))
    assert info.value.field == "sampling.max_output_tokens"
    assert prep.prepare_calls == 0
    assert prep.count_calls == 0
    await gateway.chat(chat_request(max_output_tokens=1))
    assert prep.prepare_calls == 1


async def test_preprocess_refusal_reaches_the_caller(gateway: Gateway, engine: MuseEngine) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        await gateway.chat(chat_request(" x" * 600))
    assert info.value.field == "messages"
    assert engine.stats.recent == {}


def test_list_models_one_pool(gateway: Gateway) -> None:
    ((info, is_default),) = gateway.list_models()
    assert is_default
    assert info.name == POOL_NAME
    assert info.context_length == 512
    assert info.max_output_tokens == 64
    assert info.modes == (Mode.INSTANT, Mode.THINKING, Mode.CONTEMPLATING)  # unset: all that dummy weights serve


def test_list_models_default_first(prep: PreprocessAdapter) -> None:
    data = {
        "pools": [{"name": "alpha"}, {"name": "beta", "modes": ["instant"]}, {"name": "gamma"}],
        "gateway": {"default_model": "gamma"},
    }
    config = parse_config(data)
    gateway = Gateway(config, prep, {name: UnfinishedPool() for name in ("alpha", "beta", "gamma")})
    models = gateway.list_models()
    assert [(info.name, is_default) for info, is_default in models] == [
        ("gamma", True),
        ("alpha", False),
        ("beta", False),
    ]
    assert models[2][0].modes == (Mode.INSTANT,)


def test_gateway_needs_a_client_per_pool(prep: PreprocessAdapter) -> None:
    with pytest.raises(ValueError, match=POOL_NAME):
        Gateway(CONFIG, prep, {})


async def test_count_tokens(gateway: Gateway, prep: PreprocessAdapter, preprocessor: Preprocessor) -> None:
    request = chat_request("count these words please")
    count = await gateway.count_tokens(request)
    assert count == PromptCount(preprocessor.count(request, CONFIG.pools[0]).prompt_tokens, 512, POOL_NAME)
    assert count.prompt_tokens > len("count these words please".split())
    assert prep.count_calls == 1
    assert prep.prepare_calls == 0


async def test_count_tokens_over_the_window(gateway: Gateway) -> None:
    count = await gateway.count_tokens(chat_request(" x" * 600))
    assert count.prompt_tokens > count.context_length


# ---- determinism ----


async def test_greedy_is_deterministic(gateway: Gateway) -> None:
    first = await gateway.chat(chat_request(temperature=0.0, max_output_tokens=32, seed=1))
    second = await gateway.chat(chat_request(temperature=0.0, max_output_tokens=32, seed=2))
    assert first == second
    assert first.usage.output_tokens == 32


async def test_seeded_sampling_is_deterministic(gateway: Gateway) -> None:
    a1 = await gateway.chat(chat_request(temperature=1.0, seed=1234, max_output_tokens=32))
    a2 = await gateway.chat(chat_request(temperature=1.0, seed=1234, max_output_tokens=32))
    b = await gateway.chat(chat_request(temperature=1.0, seed=4321, max_output_tokens=32))
    assert a1 == a2
    assert a1.text
    assert b.text != a1.text


# ---- failures ----


async def test_stream_without_finish_is_unavailable(prep: PreprocessAdapter) -> None:
    gateway = Gateway(CONFIG, prep, {POOL_NAME: UnfinishedPool()})
    events: list[StreamEvent] = []
    with pytest.raises(errors.Unavailable) as info:
        async for event in gateway.stream(chat_request()):
            events.append(event)
    assert events == [TextDelta("partial"), TextDelta(" answer")]
    assert POOL_NAME in info.value.message
    with pytest.raises(errors.Unavailable):
        await gateway.chat(chat_request())


class GatedExecutor:
    """A real model runner whose steps wait for a gate: holds requests in the batch."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.num_blocks = runner.num_blocks
        self.gate = threading.Event()

    def execute(self, plan: SchedulerPlan) -> torch.Tensor:
        self.gate.wait(timeout=30)
        return self.runner.execute(plan)


async def _read_all(gateway: Gateway, request: ChatRequest) -> None:
    async for _ in gateway.stream(request):
        pass


async def test_admission_rejects_beyond_running_and_waiting(prep: PreprocessAdapter, tokenizer: MuseTokenizer) -> None:
    pool = CONFIG.pools[0]
    executor = GatedExecutor(local_runner(pool, tokenizer.vocab_size))
    engine = build_engine(pool, MuseFormat(tokenizer), executor=executor)
    gateway = Gateway(CONFIG, prep, {POOL_NAME: EnginePool(engine)})
    tasks = [asyncio.create_task(_read_all(gateway, chat_request(request_id="held-0", max_output_tokens=8)))]
    try:
        # The gated step holds held-0 in the batch; held-1 then waits in the queue, which
        # holds max_waiting_requests (1): the next request is refused, not queued.
        await wait_until(lambda: engine.stats.num_running == 1)
        tasks.append(asyncio.create_task(_read_all(gateway, chat_request(request_id="held-1", max_output_tokens=8))))
        await wait_until(lambda: engine.stats.num_waiting == 1)
        with pytest.raises(errors.ResourceExhausted) as info:
            await gateway.chat(chat_request(request_id="fourth", max_output_tokens=1))
        assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
        assert engine.stats.num_rejected == 1
        assert "fourth" not in engine.stats.recent
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        executor.gate.set()
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    await wait_until(lambda: engine.stats.num_running == 0 and engine.stats.num_waiting == 0)
    assert engine.stats.num_cancelled == 2
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks  # cancel freed every block

    result = await gateway.chat(chat_request(request_id="after", temperature=0.0, max_output_tokens=3))
    assert result.usage.output_tokens == 3
    assert engine.stats.recent["after"].phase is RequestPhase.FINISHED
    engine.shutdown()


async def test_abort_ends_a_running_stream(gateway: Gateway, engine: MuseEngine) -> None:
    events: list[StreamEvent] = []
    stream = gateway.stream(chat_request(request_id="to-abort", temperature=0.0, max_output_tokens=64))
    with pytest.raises(errors.Cancelled):
        async for event in stream:
            events.append(event)
            if len(events) == 1:
                engine.abort("to-abort")
    assert len(events) == 1
    assert isinstance(events[0], TextDelta)
    record = engine.stats.recent["to-abort"]
    assert record.phase is RequestPhase.CANCELLED
    assert record.generated_tokens < 64
    assert engine.stats.num_running == 0
    assert engine.stats.num_cancelled == 1


async def test_a_drain_refuses_new_requests_and_lets_the_stream_in_flight_finish(gateway: Gateway) -> None:
    stream = gateway.stream(chat_request(request_id="in-flight", max_output_tokens=32, temperature=0.0))
    first = await anext(stream)
    draining = asyncio.create_task(gateway.drain(timeout_s=30))
    await wait_until(lambda: gateway.admission.draining)
    with pytest.raises(errors.Unavailable) as refused:
        await collect(gateway, chat_request(request_id="late"))
    assert "shutting down" in refused.value.message
    rest = [event async for event in stream]
    assert isinstance(rest[-1], Finish) and fold([first, *rest]).usage.output_tokens == 32
    assert await draining == 0  # nothing left unfinished


async def test_abort_of_an_unknown_request_is_harmless(gateway: Gateway, engine: MuseEngine) -> None:
    engine.abort("never-sent")
    result = await gateway.chat(chat_request(temperature=0.0, max_output_tokens=4))
    assert result.usage.output_tokens == 4


async def test_expired_deadline(preprocessor: Preprocessor, engine: MuseEngine) -> None:
    def expire(prepared: PreparedRequest) -> PreparedRequest:
        return dataclasses.replace(prepared, deadline_unix_s=time.time() - 1)

    gateway = Gateway(CONFIG, PreprocessAdapter(CONFIG, preprocessor, expire), {POOL_NAME: EnginePool(engine)})
    with pytest.raises(errors.DeadlineExceeded):
        await gateway.chat(chat_request(request_id="late"))
    assert engine.stats.recent["late"].generated_tokens == 0
    assert engine.stats.num_running == 0
    assert engine.stats.num_finished == 0


async def test_request_admitted_as_fitting_gets_all_its_output(
    gateway: Gateway, preprocessor: Preprocessor, prep: PreprocessAdapter
) -> None:
    pool: PoolConfig = CONFIG.pools[0]
    mode = ModeParams(Mode.THINKING, thinking_budget=48)
    base = preprocessor.count(chat_request(" x", mode=mode), pool).prompt_tokens
    request = chat_request(" x" * (400 - base + 1), mode=mode, temperature=0.0, max_output_tokens=63)
    # prompt + reasoning budget + its closing marker + output
    assert preprocessor.count(request, pool).prompt_tokens + 48 + 1 + 63 == pool.engine.context_length
    result = await gateway.chat(request)
    assert result.usage.output_tokens == 63
