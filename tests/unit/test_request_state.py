from __future__ import annotations

from collections.abc import Sequence

import pytest

from museserve.domain import FinishReason, Mode, SamplingParams, Usage
from museserve.engine.request_state import RequestState
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer

PROMPT = (1, 4, 100, 101, 7, 5, 8)


@pytest.fixture(scope="module")
def tok() -> MuseTokenizer:
    return MuseTokenizer.load(None)


def prepared(
    *,
    thinking_budget: int = 0,
    max_output_tokens: int = 100,
    stop: tuple[str, ...] = (),
    prompt: Sequence[int] = PROMPT,
) -> PreparedRequest:
    return PreparedRequest(
        request_id="r1",
        tenant="t",
        pool="p",
        prompt_token_ids=tuple(prompt),
        mode=Mode.THINKING if thinking_budget else Mode.INSTANT,
        thinking_budget=thinking_budget,
        sampling=SamplingParams(
            temperature=0.0, top_p=1.0, top_k=0, repetition_penalty=1.0, max_output_tokens=max_output_tokens, stop=stop
        ),
        deadline_unix_s=0.0,
    )


def feed(state: RequestState, ids: Sequence[int]) -> list[GenerationChunk]:
    """Appends ids one by one, taking a chunk after each, as the engine does."""
    chunks = []
    for token in ids:
        state.append(token)
        chunks.append(state.take_chunk())
    return chunks


def text_of(chunks: Sequence[GenerationChunk]) -> str:
    return "".join(c.text for c in chunks)


def reasoning_of(chunks: Sequence[GenerationChunk]) -> str:
    return "".join(c.reasoning for c in chunks)


# ---- instant ----


def test_ordinary_tokens_become_text(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    ids = tok.encode_text("Hello, world! Grüße 😀")
    chunks = feed(state, ids)
    assert text_of(chunks) == "Hello, world! Grüße 😀"
    assert reasoning_of(chunks) == ""
    assert state.finish is None
    assert state.output_tokens == len(ids)
    assert state.reasoning_tokens == 0
    assert state.in_reasoning is False
    assert all(c.finish is None and c.usage is None for c in chunks)
    assert all(c.num_new_tokens == 1 for c in chunks)


@pytest.mark.parametrize("end", ["eos_id", "end_id"])
def test_end_tokens_finish_with_stop(tok: MuseTokenizer, end: str) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    ids = tok.encode_text("done")
    chunks = feed(state, [*ids, getattr(tok, end)])
    assert state.finish is FinishReason.STOP
    assert state.output_tokens == len(ids) + 1  # the end token is an output token
    assert text_of(chunks) == "done"
    assert chunks[-1].finish is FinishReason.STOP
    assert chunks[-1].usage == Usage(prompt_tokens=len(PROMPT), output_tokens=len(ids) + 1)


def test_end_token_first(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    (chunk,) = feed(state, [tok.eos_id])
    assert chunk == GenerationChunk(
        text="", reasoning="", num_new_tokens=1, finish=FinishReason.STOP, usage=Usage(len(PROMPT), 0, 0, 1)
    )


def test_length_at_max_output_tokens(tok: MuseTokenizer) -> None:
    ids = tok.encode_text(" one two three four five")
    assert len(ids) >= 5
    state = RequestState(prepared(max_output_tokens=3), tok, MuseFormat(tok).markers)
    chunks = feed(state, ids[:3])
    assert state.finish is FinishReason.LENGTH
    assert state.output_tokens == 3
    assert [c.finish for c in chunks] == [None, None, FinishReason.LENGTH]
    assert text_of(chunks) == tok.decode(ids[:3])


def test_end_token_at_the_last_allowed_position_is_stop(tok: MuseTokenizer) -> None:
    ids = tok.encode_text(" a b")
    state = RequestState(prepared(max_output_tokens=len(ids) + 1), tok, MuseFormat(tok).markers)
    feed(state, [*ids, tok.end_id])
    assert state.finish is FinishReason.STOP
    assert state.output_tokens == len(ids) + 1


def test_stop_string_ends_with_stop(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(stop=("STOP",)), tok, MuseFormat(tok).markers)
    ids = tok.encode_text("keep this STOP not this")
    chunks = []
    for token in ids:
        state.append(token)
        chunks.append(state.take_chunk())
        if state.finish is not None:
            break
    assert state.finish is FinishReason.STOP
    text = text_of(chunks)
    assert text == "keep this "
    assert "STOP" not in text
    assert not any("ST" in c.text for c in chunks)
    assert chunks[-1].finish is FinishReason.STOP
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.output_tokens == len(chunks)


def test_stop_string_prefix_that_does_not_complete_is_released(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(stop=("STOP",)), tok, MuseFormat(tok).markers)
    ids = tok.encode_text("a STO b")
    chunks = feed(state, [*ids, tok.eos_id])
    assert text_of(chunks) == "a STO b"
    assert state.finish is FinishReason.STOP


def test_stop_string_split_across_tokens(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(stop=("xyz",)), tok, MuseFormat(tok).markers)
    ids = [*tok.encode_text("ab x"), *tok.encode_text("y"), *tok.encode_text("z tail")]
    chunks = []
    for token in ids:
        state.append(token)
        chunks.append(state.take_chunk())
        if state.finish is not None:
            break
    assert text_of(chunks) == "ab "
    assert state.finish is FinishReason.STOP


# ---- thinking ----


def test_thinking_tokens_go_to_reasoning_until_closed(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=50), tok, MuseFormat(tok).markers)
    assert state.in_reasoning
    thought = tok.encode_text("let me think")
    answer = tok.encode_text("the answer")
    chunks = feed(state, [*thought, tok.think_end_id, *answer, tok.eos_id])
    assert reasoning_of(chunks) == "let me think"
    assert text_of(chunks) == "the answer"
    assert state.reasoning_tokens == len(thought) + 1  # the closing marker counts
    assert state.output_tokens == len(answer) + 1
    assert chunks[-1].usage == Usage(len(PROMPT), 0, len(thought) + 1, len(answer) + 1)
    assert chunks[-1].usage.total_tokens == state.num_tokens


def test_forced_token_exactly_when_the_budget_is_spent(tok: MuseTokenizer) -> None:
    budget = 4
    state = RequestState(prepared(thinking_budget=budget), tok, MuseFormat(tok).markers)
    ordinary = tok.encode_text(" a b c d e f g h")
    forced = []
    for token in ordinary[:budget]:
        forced.append(state.forced_token())
        state.append(token)
    assert forced == [None] * budget
    assert state.forced_token() == tok.think_end_id
    assert state.forced_token() == tok.think_end_id  # asking again changes nothing
    state.append(tok.think_end_id)
    assert not state.in_reasoning
    assert state.reasoning_tokens == budget + 1
    assert state.forced_token() is None
    state.append(ordinary[budget])
    assert state.forced_token() is None
    assert state.output_tokens == 1


def test_model_closing_reasoning_early(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=100), tok, MuseFormat(tok).markers)
    feed(state, [*tok.encode_text("hm"), tok.think_end_id])
    assert not state.in_reasoning
    assert state.forced_token() is None
    chunks = feed(state, tok.encode_text("ok"))
    assert text_of(chunks) == "ok"


def test_zero_budget_starts_in_the_answer(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=0), tok, MuseFormat(tok).markers)
    assert not state.in_reasoning
    assert state.forced_token() is None
    chunks = feed(state, tok.encode_text("hi"))
    assert text_of(chunks) == "hi"
    assert state.reasoning_tokens == 0


def test_eos_inside_reasoning_finishes_with_empty_answer(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=50), tok, MuseFormat(tok).markers)
    thought = tok.encode_text("unfinished thought")
    chunks = feed(state, [*thought, tok.eos_id])
    assert state.finish is FinishReason.STOP
    assert reasoning_of(chunks) == "unfinished thought"
    assert text_of(chunks) == ""
    assert state.output_tokens == 0
    assert state.reasoning_tokens == len(thought) + 1
    assert chunks[-1].usage == Usage(len(PROMPT), 0, len(thought) + 1, 0)


def test_end_inside_reasoning_finishes_too(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=50), tok, MuseFormat(tok).markers)
    feed(state, [tok.end_id])
    assert state.finish is FinishReason.STOP


def test_max_output_counts_only_answer_tokens(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=10, max_output_tokens=2), tok, MuseFormat(tok).markers)
    thought = tok.encode_text(" a b c")
    feed(state, [*thought, tok.think_end_id])
    assert state.finish is None
    answer = tok.encode_text(" x y z")
    feed(state, answer[:2])
    assert state.finish is FinishReason.LENGTH
    assert (state.reasoning_tokens, state.output_tokens) == (len(thought) + 1, 2)


def test_stop_strings_do_not_apply_to_reasoning(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=50, stop=("END",)), tok, MuseFormat(tok).markers)
    chunks = feed(state, [*tok.encode_text("END of thought"), tok.think_end_id])
    assert state.finish is None
    assert reasoning_of(chunks) == "END of thought"


# ---- end_for_length ----


def test_end_for_length_in_the_answer(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    ids = tok.encode_text("partial")
    feed(state, ids)
    state.end_for_length()
    chunk = state.take_chunk()
    assert state.finish is FinishReason.LENGTH
    assert chunk.finish is FinishReason.LENGTH
    assert chunk.usage == Usage(len(PROMPT), 0, 0, len(ids))


def test_end_for_length_in_reasoning(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=50), tok, MuseFormat(tok).markers)
    feed(state, tok.encode_text("thinking"))
    state.end_for_length()
    chunk = state.take_chunk()
    assert chunk.finish is FinishReason.LENGTH
    assert chunk.usage is not None and chunk.usage.output_tokens == 0


def test_end_for_length_flushes_held_text(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(stop=("abc",)), tok, MuseFormat(tok).markers)
    chunks = feed(state, tok.encode_text("xx a"))
    assert text_of(chunks) == "xx "  # "a" may begin the stop string
    state.end_for_length()
    assert state.take_chunk().text == "a"


# ---- chunks ----


def test_take_chunk_drains_pending_text(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    ids = tok.encode_text("several words of text")
    for token in ids:
        state.append(token)
    first = state.take_chunk()
    assert first.text == "several words of text"
    assert first.num_new_tokens == len(ids)
    assert first.finish is None and first.usage is None
    assert state.take_chunk() == GenerationChunk()
    state.append(tok.eos_id)
    last = state.take_chunk()
    assert last.text == ""
    assert last.num_new_tokens == 1
    assert last.finish is FinishReason.STOP
    assert last.usage == Usage(len(PROMPT), 0, 0, len(ids) + 1)


def test_only_the_final_chunk_has_finish_and_usage(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(thinking_budget=3, max_output_tokens=4), tok, MuseFormat(tok).markers)
    tokens = tok.encode_text(" p q r s t u v w")
    chunks = []
    i = 0
    while state.finish is None:
        token = state.forced_token()
        if token is None:
            token = tokens[i]
            i += 1
        state.append(token)
        chunks.append(state.take_chunk())
    assert [c.finish is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].finish is FinishReason.LENGTH
    assert chunks[-1].usage == Usage(len(PROMPT), 0, 4, 4)
    assert sum(c.num_new_tokens for c in chunks) == 8
    assert reasoning_of(chunks) == tok.decode(tokens[:3])
    assert text_of(chunks) == tok.decode(tokens[3:7])


def test_usage_numbers(tok: MuseTokenizer) -> None:
    prompt = tuple(range(40, 52))
    state = RequestState(prepared(thinking_budget=5, prompt=prompt), tok, MuseFormat(tok).markers)
    feed(state, [*tok.encode_text(" a b"), tok.think_end_id, *tok.encode_text(" c")])
    usage = state.usage()
    assert usage.prompt_tokens == 12
    assert usage.cached_tokens == 0
    assert usage.reasoning_tokens == 3
    assert usage.output_tokens == 1
    assert state.num_generated_tokens == 4
    assert state.num_tokens == 16
    assert usage.total_tokens == 16


def test_appending_after_finish_is_refused(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    state.append(tok.eos_id)
    with pytest.raises(AssertionError):
        state.append(tok.encode_text("x")[0])
    assert state.output_tokens == 1


def test_appending_after_end_for_length_is_refused(tok: MuseTokenizer) -> None:
    state = RequestState(prepared(), tok, MuseFormat(tok).markers)
    state.end_for_length()
    with pytest.raises(AssertionError):
        state.append(tok.eos_id)


def test_a_prepared_request_with_unresolved_sampling_is_refused_where_it_is_built() -> None:
    with pytest.raises(ValueError, match="temperature, repetition_penalty"):
        PreparedRequest(
            request_id="r",
            tenant="t",
            pool="p",
            prompt_token_ids=(1, 2),
            mode=Mode.INSTANT,
            thinking_budget=0,
            sampling=SamplingParams(top_p=1.0, top_k=0, max_output_tokens=4),
            deadline_unix_s=0.0,
        )
