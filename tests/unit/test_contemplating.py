"""Contemplating on a real tiny engine: agents share the prompt's KV blocks, progress is
reported, usage sums every pass, and a quorum survives a failed agent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from museserve.config import MuseServeConfig, parse_config
from museserve.domain import AgentProgress, ChatRequest, Message, Mode, ModeParams, Role, SamplingParams, TextPart
from museserve.engine.engine import MuseEngine
from museserve.errors import InvalidArgument, Unavailable
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.modes.contemplating import Contemplation
from museserve.preprocess.contemplating_prompts import ANGLES, SYNTHESIS_INSTRUCTION
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine

CONFIG: MuseServeConfig = parse_config(
    {
        "pools": [
            {
                "name": "muse-tiny",
                "modes": ["instant", "thinking", "contemplating"],
                "engine": {
                    "context_length": 4096,
                    "max_output_tokens": 256,
                    "default_max_output_tokens": 16,
                    "stream_interval_ms": 0,
                },
                "contemplating": {"agent_answer_tokens": 8, "synthesis_thinking_budget": 4},
            }
        ]
    }
)
POOL = CONFIG.pools[0]
LONG_PROMPT = "Explain why the sky is blue, step by step. " * 12


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture
def engine(tokenizer: MuseTokenizer) -> Iterator[MuseEngine]:
    eng = build_engine(POOL, MuseFormat(tokenizer))
    yield eng
    eng.shutdown()


def prepare(tokenizer: MuseTokenizer, agents: int = 4, budget: int = 6, **sampling) -> PreparedRequest:
    request = ChatRequest(
        "c1",
        (Message(Role.USER, (TextPart(LONG_PROMPT),)),),
        sampling=SamplingParams(**{"temperature": 0.0, "max_output_tokens": 6, **sampling}),
        mode=ModeParams(Mode.CONTEMPLATING, thinking_budget=budget, num_agents=agents),
    )
    return Preprocessor(PoolModel.muse(tokenizer), CONFIG.preprocess.media, 60.0).prepare(request, POOL)


async def collect(chunks: AsyncIterator[GenerationChunk]) -> list[GenerationChunk]:
    return [chunk async for chunk in chunks]


async def test_agents_share_the_prompt_blocks_and_usage_sums_every_pass(
    engine: MuseEngine, tokenizer: MuseTokenizer
) -> None:
    request = prepare(tokenizer)
    assert request.num_agents == 4
    chunks = await collect(Contemplation(engine, tokenizer, POOL.contemplating).generate(request))
    progress = [p for c in chunks for p in c.agent_progress]
    assert {p.agent_index for p in progress} == {0, 1, 2, 3}
    assert all(any(p.agent_index == i and p.done for p in progress) for i in range(4))
    final = chunks[-1]
    assert final.finish is not None and final.usage is not None
    shared = request.contemplation.shared
    shared_blocks = len(shared) // POOL.engine.block_size * POOL.engine.block_size
    # Agents 1-3 found the conversation in the prefix cache (agent 0 computed it), and so did the synthesis.
    assert final.usage.cached_tokens >= 4 * shared_blocks
    assert final.usage.prompt_tokens > 5 * len(shared)
    assert final.usage.reasoning_tokens >= 4 * 6  # every agent's reasoning is counted
    # Progress comes before the synthesis' own deltas.
    first_text = next(i for i, c in enumerate(chunks) if c.text or c.reasoning)
    assert all(not c.agent_progress for c in chunks[first_text:])


class FailingAgents:
    """An engine whose agents with the listed indices fail; everything else runs for real."""

    def __init__(self, engine: MuseEngine, failing: set[int]):
        self._engine, self._failing = engine, failing

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        if any(request.request_id.endswith(f"#agent{i}") for i in self._failing):
            raise Unavailable("replica lost the agent")
        async for chunk in self._engine.generate(request):
            yield chunk


async def test_a_quorum_answers_despite_a_failed_agent(engine: MuseEngine, tokenizer: MuseTokenizer) -> None:
    runner = Contemplation(FailingAgents(engine, {2}), tokenizer, POOL.contemplating)
    chunks = await collect(runner.generate(prepare(tokenizer)))
    assert chunks[-1].finish is not None
    done = {p.agent_index for c in chunks for p in c.agent_progress if p.done}
    assert done == {0, 1, 2, 3}  # the failed agent is reported done too


async def test_too_few_answers_fail_the_request(engine: MuseEngine, tokenizer: MuseTokenizer) -> None:
    runner = Contemplation(FailingAgents(engine, {1, 2, 3}), tokenizer, POOL.contemplating)
    with pytest.raises(Unavailable, match="only 1 of 4 agents answered"):
        await collect(runner.generate(prepare(tokenizer)))
    assert engine.stats.snapshot()["num_running"] == 0


async def test_seeded_contemplation_is_reproducible(engine: MuseEngine, tokenizer: MuseTokenizer) -> None:
    runner = Contemplation(engine, tokenizer, POOL.contemplating)
    request = prepare(tokenizer, temperature=1.0, seed=7)
    texts = []
    for _ in range(2):
        chunks = await collect(runner.generate(request))
        texts.append("".join(c.text for c in chunks))
    assert texts[0] == texts[1]


def test_a_contemplation_that_cannot_fit_is_refused_up_front(tokenizer: MuseTokenizer) -> None:
    small = parse_config(
        {
            "pools": [
                {
                    "name": "p",
                    "modes": ["contemplating"],
                    "engine": {"context_length": 400, "max_output_tokens": 64, "default_max_output_tokens": 16},
                }
            ]
        }
    ).pools[0]
    request = ChatRequest(
        "c2",
        (Message(Role.USER, (TextPart("hello"),)),),
        mode=ModeParams(Mode.CONTEMPLATING, thinking_budget=16, num_agents=8),
    )
    with pytest.raises(InvalidArgument) as e:
        Preprocessor(PoolModel.muse(tokenizer), CONFIG.preprocess.media, 60.0).prepare(request, small)
    assert e.value.field == "mode.num_agents"


def test_the_passes_share_the_conversation_and_add_a_system_turn(tokenizer: MuseTokenizer) -> None:
    request = prepare(tokenizer, agents=3)
    prompts = request.contemplation
    conversation = request.prompt_token_ids[:-2]  # without <|assistant|> <|think|>: the segment is open
    assert prompts.shared[: len(conversation)] == conversation
    assert len(prompts.agents) == 3 and prompts.synthesis_thinking_budget == 4
    for i, suffix in enumerate(prompts.agents):
        full = prompts.shared + suffix
        assert full[len(conversation)] == tokenizer.system_id
        assert ANGLES[i] in tokenizer.decode(full[len(conversation) :])
        assert full[-2:] == (tokenizer.assistant_id, tokenizer.think_id)  # reasoning open: budget 6
    before, after = prompts.synthesis
    assert tokenizer.decode(prompts.shared + before).endswith(SYNTHESIS_INSTRUCTION)
    assert after == (tokenizer.end_id, tokenizer.assistant_id, tokenizer.think_id)


def test_agent_progress_is_a_domain_event() -> None:
    assert AgentProgress(1, 5, False).agent_index == 1
