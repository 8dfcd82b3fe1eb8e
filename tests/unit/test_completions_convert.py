"""`/v1/completions` bodies -> domain requests with a raw prompt, and every refusal with the
field OpenAI's API names."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from museserve.api.openai.completions_convert import completion_request_from_openai
from museserve.api.openai.completions_schemas import CompletionRequest
from museserve.api.openai.errors import validation_message
from museserve.domain import ChatRequest, Identity, Mode, ModelInfo, RawPrompt, ToolChoiceKind
from museserve.errors import ErrorCode, MuseError

MODELS = {
    "muse-tiny": ModelInfo("muse-tiny", 2048, 1024, (Mode.INSTANT, Mode.THINKING)),
    "muse-small-cap": ModelInfo("muse-small-cap", 2048, 8, (Mode.INSTANT,)),
}


def convert(**fields: Any) -> ChatRequest:
    body = CompletionRequest.model_validate({"model": "muse-tiny", "prompt": "Once upon", **fields})
    return completion_request_from_openai(body, "req-1", Identity("t", "u"), MODELS)


def refusal(**fields: Any) -> MuseError:
    with pytest.raises(MuseError) as caught:
        convert(**fields)
    return caught.value


def invalid_param(body: dict[str, Any]) -> str | None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest.model_validate({"model": "muse-tiny", "prompt": "x", **body})
    errors = [{**e, "loc": ("body", *e["loc"])} for e in caught.value.errors()]
    return validation_message(errors)[1]


def test_a_string_prompt_is_a_raw_prompt_in_instant_mode():
    request = convert()
    assert request.prompt == RawPrompt(text="Once upon") and request.messages == ()
    assert (request.model, request.mode.mode) == ("muse-tiny", Mode.INSTANT)
    assert request.tool_choice.kind is ToolChoiceKind.NONE
    assert (request.request_id, request.identity) == ("req-1", Identity("t", "u"))
    s = request.sampling
    assert (s.max_output_tokens, s.n, s.logprobs, s.prompt_logprobs) == (16, 1, False, None)
    assert s.skip_special_tokens and not s.ignore_eos and s.min_tokens == 0


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ([5, 6, 7], RawPrompt(token_ids=(5, 6, 7))),
        (["alone in a list"], RawPrompt(text="alone in a list")),
        ([[8, 9]], RawPrompt(token_ids=(8, 9))),
    ],
)
def test_token_ids_and_one_element_lists(prompt, expected):
    assert convert(prompt=prompt).prompt == expected


def test_an_empty_model_is_the_default_and_max_tokens_defaults_within_the_models_cap():
    body = CompletionRequest.model_validate({"prompt": "x"})
    assert completion_request_from_openai(body, "r", Identity(), MODELS).model == "muse-tiny"
    assert convert(model="muse-small-cap").sampling.max_output_tokens == 8  # OpenAI's 16, capped
    assert convert(model="muse-tiny:instant", max_tokens=40).sampling.max_output_tokens == 40


def test_logprobs_and_echo_ask_for_the_prompts_log_probabilities():
    plain = convert(logprobs=3).sampling
    assert (plain.logprobs, plain.top_logprobs, plain.prompt_logprobs) == (True, 3, None)
    echoed = convert(logprobs=2, echo=True).sampling
    assert (echoed.logprobs, echoed.top_logprobs, echoed.prompt_logprobs) == (True, 2, 2)
    assert convert(logprobs=0, echo=True).sampling.prompt_logprobs == 0
    assert convert(echo=True).sampling.prompt_logprobs is None  # the text is the prompt as sent
    tokens = convert(prompt=[1, 2], echo=True).sampling  # its text comes from the prompt's token strings
    assert (tokens.logprobs, tokens.prompt_logprobs) == (False, 0)


def test_sampling_fields_and_vllm_extensions():
    s = convert(
        temperature=0.5, top_p=0.9, seed=3, stop="\n", presence_penalty=0.5, frequency_penalty=-0.5, n=3, best_of=3,
        top_k=40, min_tokens=2, ignore_eos=True, repetition_penalty=1.1, skip_special_tokens=False,
    ).sampling  # fmt: skip
    assert (s.temperature, s.top_p, s.seed, s.stop) == (0.5, 0.9, 3, ("\n",))
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)
    assert (s.n, s.top_k, s.min_tokens, s.ignore_eos, s.repetition_penalty) == (3, 40, 2, True, 1.1)
    assert not s.skip_special_tokens and convert(stop=["a", "b"]).sampling.stop == ("a", "b")
    assert s.speculative and not convert(speculative="off").sampling.speculative


def test_continuous_usage_stats_ask_for_usage_in_the_stream():
    options = {"continuous_usage_stats": True}
    assert convert(stream=True, stream_options=options).usage_in_stream
    assert not convert(stream=True).usage_in_stream and not convert(stream_options=options).usage_in_stream


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"prompt": ["one", "two"]}, "prompt", ErrorCode.INVALID_ARGUMENT),
        ({"prompt": [[1], [2]]}, "prompt", ErrorCode.INVALID_ARGUMENT),
        ({"prompt": []}, "prompt", ErrorCode.INVALID_ARGUMENT),
        ({"suffix": "the end"}, "suffix", ErrorCode.INVALID_ARGUMENT),
        ({"logit_bias": {"1": 5}}, "logit_bias", ErrorCode.INVALID_ARGUMENT),
        ({"n": 2, "best_of": 3}, "best_of", ErrorCode.INVALID_ARGUMENT),
        ({"model": "muse-tiny:thinking"}, "model", ErrorCode.INVALID_ARGUMENT),
        ({"model": "gpt-3.5-turbo-instruct"}, "model", ErrorCode.NOT_FOUND),
    ],
)
def test_refusals_name_the_openai_field(fields, param, code):
    error = refusal(**fields)
    assert (error.field, error.code) == (param, code)


def test_several_prompts_are_refused_with_a_message_saying_so():
    assert "one prompt per request" in refusal(prompt=["a", "b"]).message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"prompt": [-1]}, "prompt[0]"),
        ({"prompt": {"text": "x"}}, "prompt"),
        ({"prompt": "lone \ud800 surrogate"}, "prompt"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ({"stream_options": {"continuous_usage_stats": "often"}}, "stream_options.continuous_usage_stats"),
    ],
)
def test_schema_errors_name_the_field_path(body, param):
    assert invalid_param(body) == param
