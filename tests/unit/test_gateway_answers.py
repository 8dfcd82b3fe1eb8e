"""The gateway's stream for n answers, plain completions, usage in the stream and stored
conversations, over the in-process engine and preprocess tier."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from museserve import errors
from museserve.domain import (
    ChatRequest,
    ChoiceEnd,
    Finish,
    Identity,
    Message,
    PromptLogprobs,
    RawPrompt,
    Role,
    RunningUsage,
    SamplingParams,
    StreamEvent,
    TextPart,
    Usage,
)
from museserve.engine.engine import MuseEngine
from museserve.gateway.gateway import Gateway
from museserve.modes.dispatch import ReplicaModes
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.replica import build_engine
from tests.unit.test_gateway import CONFIG, POOL_NAME, PreprocessAdapter, preprocessor  # noqa: F401


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture
def modes(tokenizer: MuseTokenizer) -> Iterator[ReplicaModes]:
    engine: MuseEngine = build_engine(CONFIG.pools[0], MuseFormat(tokenizer))
    yield ReplicaModes(engine, tokenizer, CONFIG.pools[0].contemplating)
    engine.shutdown()


@pytest.fixture
def gateway(modes: ReplicaModes, preprocessor) -> Gateway:  # noqa: F811
    return Gateway(CONFIG, PreprocessAdapter(CONFIG, preprocessor), {POOL_NAME: modes})


def ask(text: str, **fields) -> ChatRequest:
    return ChatRequest(fields.pop("request_id", "r1"), (Message(Role.USER, (TextPart(text),)),), **fields)


async def events_of(gateway: Gateway, request: ChatRequest, metadata: list | None = None) -> list[StreamEvent]:
    sink = metadata.extend if metadata is not None else None
    return [e async for e in gateway.stream(request, sink)]


async def test_n_answers_stream_each_with_its_index_and_end(gateway: Gateway):
    request = ask("Name a colour.", sampling=SamplingParams(n=2, temperature=1.0, seed=3, max_output_tokens=5))
    events = await events_of(gateway, request)
    ends = [e for e in events if isinstance(e, ChoiceEnd)]
    assert sorted(e.index for e in ends) == [0, 1]
    assert isinstance(events[-1], Finish) and isinstance(events[-2], Usage)
    generated = events[-2].output_tokens
    assert 2 <= generated <= 10  # each answer ends at its budget of 5 or earlier
    result = await gateway.chat(ask("Name a colour.", request_id="r2", sampling=request.sampling))
    assert len(result.choices) == 2 and result.text == result.choices[0].text
    assert result.usage.output_tokens == generated, "seeded: the same two answers"


async def test_more_answers_than_the_pool_runs_at_once_are_refused(gateway: Gateway):
    with pytest.raises(errors.InvalidArgument) as e:
        await events_of(gateway, ask("Hi", sampling=SamplingParams(n=3)))
    assert e.value.field == "sampling.n"


async def test_usage_in_the_stream_counts_up_to_the_final_usage(gateway: Gateway):
    events = await events_of(gateway, ask("Count.", usage_in_stream=True, sampling=SamplingParams(max_output_tokens=6)))
    running = [e.usage for e in events if isinstance(e, RunningUsage)]
    final = next(e for e in events if isinstance(e, Usage))
    assert running and running == sorted(running, key=lambda u: u.output_tokens)
    assert all(u.prompt_tokens == final.prompt_tokens for u in running)
    assert running[-1].output_tokens <= final.output_tokens == 6


async def test_a_plain_completion_scores_its_prompt(gateway: Gateway, tokenizer: MuseTokenizer):  # noqa: F811
    request = ChatRequest(
        "p1",
        (),
        prompt=RawPrompt(text="The quick brown fox"),
        sampling=SamplingParams(max_output_tokens=3, prompt_logprobs=1),
    )
    events = await events_of(gateway, request)
    scored = [e for e in events if isinstance(e, PromptLogprobs)]
    assert len(scored) == 1 and events.index(scored[0]) == 0, "before any delta"
    ids = tokenizer.encode_prompt("The quick brown fox")
    assert [p.chosen.token_id for p in scored[0].positions] == ids
    assert math.isnan(scored[0].positions[0].chosen.logprob)
    assert all(p.chosen.logprob <= 0 and len(p.top) == 1 for p in scored[0].positions[1:])


async def test_a_token_prompt_outside_the_vocabulary_is_refused_by_position(gateway: Gateway):
    bad = ChatRequest("p2", (), prompt=RawPrompt(token_ids=(5, 10**7)))
    with pytest.raises(errors.InvalidArgument) as e:
        await events_of(gateway, bad)
    assert e.value.field == "prompt[1]"


async def test_a_stored_answer_is_continued_and_scoped_to_its_tenant(gateway: Gateway):
    alice = Identity("alice")
    metadata: list[tuple[str, str]] = []
    first = await events_of(gateway, ask("My name is Ada.", identity=alice, store=True), metadata)
    response_id = dict(metadata)["x-museserve-response-id"]
    assert first[-1].response_id == response_id
    follow = ask("What is my name?", request_id="r2", identity=alice, previous_response_id=response_id)
    resolved = await gateway.conversations.resolve(follow)
    assert [m.role for m in resolved.messages] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert resolved.messages[0].text == "My name is Ada."
    events = await events_of(gateway, follow)
    assert events[-1].response_id == "", "not stored unless asked"
    assert next(e for e in events if isinstance(e, Usage)).prompt_tokens > first[-2].prompt_tokens
    with pytest.raises(errors.NotFound):
        await events_of(
            gateway, ask("Hi", request_id="r3", identity=Identity("mallory"), previous_response_id=response_id)
        )


async def test_instructions_apply_to_their_turn_only(gateway: Gateway):
    metadata: list[tuple[str, str]] = []
    await events_of(gateway, ask("Hello.", instructions="Answer in French.", store=True), metadata)
    stored = await gateway.conversations.get(Identity(), dict(metadata)["x-museserve-response-id"])
    assert [m.role for m in stored.conversation()] == [Role.USER, Role.ASSISTANT]
    assert stored.instructions == "Answer in French."
