"""`/v1/completions`, n answers and vLLM's sampling extensions over HTTP, driven by the official
`openai` client against the session app (muse-tiny: seeded dummy weights, so the texts mean
nothing; what is checked is their shape and how they relate)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from museserve.config import MuseServeConfig

from .conftest import TEST_KEY

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time"
GREEDY = {"temperature": 0, "seed": 1}
HELLO = [{"role": "user", "content": "hello there"}]
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}


@pytest.fixture
def oai(app_config: MuseServeConfig) -> Iterator[openai.OpenAI]:
    base_url = f"http://127.0.0.1:{app_config.server.http_port}/v1"
    with openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0, timeout=60) as client:
        yield client


def test_echo_with_logprobs_scores_the_prompt_then_the_answer(oai: openai.OpenAI):
    completion = oai.completions.create(model="muse-tiny", prompt=PROMPT, echo=True, logprobs=2, max_tokens=4, **GREEDY)
    assert completion.object == "text_completion" and completion.model == "muse-tiny"
    (choice,) = completion.choices
    assert choice.text.startswith(PROMPT) and choice.finish_reason in ("stop", "length")
    usage = completion.usage
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == usage.prompt_tokens + usage.completion_tokens
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # nothing precedes it
    assert all(v <= 0 for v in logprobs.token_logprobs[1:])
    scored = zip(logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True)
    for token, value, top in scored:
        assert len(top) >= 2 and top[token] == value  # the chosen token beside its alternatives
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert logprobs.text_offset[usage.prompt_tokens] == len(PROMPT)
    plain = oai.completions.create(model="muse-tiny", prompt=PROMPT, max_tokens=4, **GREEDY)
    assert PROMPT + plain.choices[0].text == choice.text  # echo changes nothing else


def test_a_token_id_prompt_is_echoed_as_its_tokens_text(oai: openai.OpenAI):
    ids = [72, 101, 108, 108, 111]
    scored = oai.completions.create(model="muse-tiny", prompt=ids, echo=True, logprobs=0, max_tokens=1, **GREEDY)
    assert scored.usage.prompt_tokens == len(ids)
    prompt_text = "".join(scored.choices[0].logprobs.tokens[: len(ids)])
    echoed = oai.completions.create(model="muse-tiny", prompt=ids, echo=True, max_tokens=3, **GREEDY)
    assert echoed.choices[0].text.startswith(prompt_text) and echoed.choices[0].logprobs is None
    assert echoed.choices[0].text.startswith(scored.choices[0].text)  # greedy: the same first token


def test_n_answers_of_one_prompt(oai: openai.OpenAI):
    completion = oai.completions.create(model="muse-tiny", prompt=PROMPT, n=3, max_tokens=6, temperature=1.0, seed=7)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert completion.usage.completion_tokens <= 3 * 6 and completion.usage.prompt_tokens > 0
    assert len({c.text for c in completion.choices}) > 1  # sampled apart, from one prefill


def test_a_stream_assembles_the_unary_text_and_ends_with_usage(oai: openai.OpenAI):
    unary = oai.completions.create(model="muse-tiny", prompt=PROMPT, echo=True, max_tokens=8, **GREEDY)
    chunks = list(
        oai.completions.create(
            model="muse-tiny",
            prompt=PROMPT,
            echo=True,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )  # fmt: skip
    )
    assert chunks[0].choices[0].text == PROMPT  # the echo comes first
    assert "".join(c.choices[0].text for c in chunks if c.choices) == unary.choices[0].text
    assert chunks[-2].choices[0].finish_reason == unary.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == unary.usage.completion_tokens


def test_a_stream_of_n_answers_with_continuous_usage(oai: openai.OpenAI):
    stream = oai.completions.create(model="muse-tiny", prompt=PROMPT, n=2, max_tokens=6, temperature=1.0, seed=3,
                                    stream=True, extra_body={"stream_options": CONTINUOUS})  # fmt: skip
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] <= 12
    ends = [c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(ends) == [0, 1]


def test_completion_refusals_name_the_field(oai: openai.OpenAI):
    for fields, param in (
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": PROMPT, "suffix": "The end."}, "suffix"),
        ({"prompt": PROMPT, "n": 2, "best_of": 3}, "best_of"),
        ({"prompt": PROMPT, "n": 17}, "n"),  # over gateway.limits.max_choices
        ({"prompt": PROMPT, "extra_body": {"min_tokens": 9}, "max_tokens": 4}, "min_tokens"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            oai.completions.create(model="muse-tiny", **fields)
        assert caught.value.body["param"] == param, caught.value.body


def test_an_empty_model_is_the_default(oai: openai.OpenAI):
    assert oai.completions.create(model="", prompt=PROMPT, max_tokens=2).model == "muse-tiny"


# ---- chat: n answers and vLLM's extensions ----


def test_chat_n_answers_unary_and_streamed(oai: openai.OpenAI):
    sampled = {"temperature": 1.0, "seed": 11, "max_tokens": 8}
    completion = oai.chat.completions.create(model="muse-tiny", messages=HELLO, n=2, **sampled)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in completion.choices)
    stream = oai.chat.completions.create(model="muse-tiny", messages=HELLO, n=2, stream=True,
                                         stream_options={"include_usage": True}, **sampled)  # fmt: skip
    chunks = list(stream)
    texts: dict[int, str] = {0: "", 1: ""}
    ends: dict[int, str] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            ends[choice.index] = choice.finish_reason
    assert texts == {i: c.message.content for i, c in enumerate(completion.choices)}  # the same seed
    assert ends == {i: c.finish_reason for i, c in enumerate(completion.choices)}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == completion.usage.completion_tokens


def test_chat_ignore_eos_and_min_tokens(oai: openai.OpenAI):
    long = oai.chat.completions.create(model="muse-tiny", messages=HELLO, max_tokens=24, extra_body={"ignore_eos": True},
                                       **GREEDY)  # fmt: skip
    assert long.usage.completion_tokens == 24 and long.choices[0].finish_reason == "length"
    at_least = oai.chat.completions.create(
        model="muse-tiny", messages=HELLO, max_tokens=24, extra_body={"min_tokens": 10}, temperature=1.0, seed=5
    )
    assert at_least.usage.completion_tokens >= 10


def test_chat_continuous_usage_stats(oai: openai.OpenAI):
    stream = oai.chat.completions.create(model="muse-tiny", messages=HELLO, max_tokens=8, stream=True,
                                         stream_options=CONTINUOUS, **GREEDY)  # type: ignore[arg-type]  # fmt: skip
    chunks = list(stream)
    assert all(c.usage is not None for c in chunks)
    assert chunks[0].usage.completion_tokens == 0 and chunks[0].choices[0].delta.role == "assistant"
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == counts[-2]  # the final usage equals the last running count


def test_chat_skip_special_tokens_is_accepted(oai: openai.OpenAI):
    kept = oai.chat.completions.create(model="muse-tiny", messages=HELLO, max_tokens=4,
                                       extra_body={"skip_special_tokens": False}, **GREEDY)  # fmt: skip
    assert kept.choices[0].message.role == "assistant"


def test_chat_refusals_name_the_field(oai: openai.OpenAI):
    for fields, param in (({"n": 200}, "n"), ({"n": 17}, "n"), ({"extra_body": {"best_of": 2}}, "best_of")):
        with pytest.raises(openai.BadRequestError) as caught:
            oai.chat.completions.create(model="muse-tiny", messages=HELLO, max_tokens=2, **fields)
        assert caught.value.body["param"] == param, caught.value.body
