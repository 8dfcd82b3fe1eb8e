"""Plain completions, n answers, min_tokens and prompt log probabilities: refused before any
work, each naming its field."""

from __future__ import annotations

import pytest

from museserve.config import PoolConfig, RequestLimits
from museserve.domain import (
    ChatRequest,
    Message,
    Mode,
    ModeParams,
    RawPrompt,
    ResponseFormat,
    ResponseFormatKind,
    Role,
    SamplingParams,
    TextPart,
    ToolSpec,
)
from museserve.errors import InvalidArgument
from museserve.gateway.validation import validate_request

POOL = PoolConfig(name="muse-test", engine={"max_output_tokens": 64, "default_max_output_tokens": 16})
STORY = RawPrompt(text="Once upon a time")
LIMITS = RequestLimits()
HELLO = (Message(Role.USER, (TextPart("hello"),)),)


def completion(prompt: RawPrompt = STORY, **fields) -> ChatRequest:
    return ChatRequest("r", (), prompt=prompt, **fields)


def refused(request: ChatRequest, limits: RequestLimits = LIMITS) -> str:
    with pytest.raises(InvalidArgument) as e:
        validate_request(request, POOL, limits)
    return e.value.field


def test_a_plain_completion_passes():
    validate_request(completion(), POOL, RequestLimits())
    validate_request(completion(RawPrompt(token_ids=(1, 2, 3))), POOL, RequestLimits())


@pytest.mark.parametrize(
    "request_, field",
    [
        (completion(RawPrompt(text="")), "prompt"),
        (completion(RawPrompt(token_ids=())), "prompt"),
        (completion(RawPrompt(token_ids=(4, -1))), "prompt"),
        (completion(RawPrompt()), "prompt"),
        (completion(RawPrompt(text="x", token_ids=(1,))), "prompt"),
        (ChatRequest("r", HELLO, prompt=RawPrompt(text="x")), "messages"),
        (completion(mode=ModeParams(Mode.THINKING)), "mode.mode"),
        (completion(tools=(ToolSpec("f", "", "{}"),)), "tools"),
        (completion(response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT)), "response_format"),
    ],
)
def test_plain_completion_refusals_name_the_field(request_: ChatRequest, field: str):
    assert refused(request_) == field


def test_a_plain_prompt_over_the_text_limit_is_refused():
    assert refused(completion(RawPrompt(text="x" * 101)), RequestLimits(max_text_bytes=100)) == "prompt"


@pytest.mark.parametrize(
    "sampling, mode, field",
    [
        (SamplingParams(n=0), Mode.INSTANT, "sampling.n"),
        (SamplingParams(n=17), Mode.INSTANT, "sampling.n"),
        (SamplingParams(n=2), Mode.CONTEMPLATING, "sampling.n"),
        (SamplingParams(min_tokens=-1), Mode.INSTANT, "sampling.min_tokens"),
        (SamplingParams(min_tokens=9, max_output_tokens=8), Mode.INSTANT, "sampling.min_tokens"),
        (SamplingParams(min_tokens=65), Mode.INSTANT, "sampling.min_tokens"),
        (SamplingParams(prompt_logprobs=21), Mode.INSTANT, "sampling.prompt_logprobs"),
        (SamplingParams(prompt_logprobs=0), Mode.CONTEMPLATING, "sampling.prompt_logprobs"),
    ],
)
def test_answer_settings_out_of_bounds_name_the_field(sampling: SamplingParams, mode: Mode, field: str):
    assert refused(ChatRequest("r", HELLO, sampling=sampling, mode=ModeParams(mode))) == field


def test_min_tokens_cannot_hold_open_a_json_answer():
    request = ChatRequest(
        "r",
        HELLO,
        sampling=SamplingParams(min_tokens=4),
        response_format=ResponseFormat(ResponseFormatKind.JSON_OBJECT),
    )
    assert refused(request) == "sampling.min_tokens"


def test_sixteen_answers_and_a_min_within_the_budget_pass():
    validate_request(ChatRequest("r", HELLO, sampling=SamplingParams(n=16, min_tokens=8, max_output_tokens=8)),
                     POOL, RequestLimits())  # fmt: skip
