"""Domain results and events -> `text_completion` JSON and SSE, checked against the official
client's `Completion` type; echo with the prompt's log probabilities in the legacy shape; the
`/v1/completions` handler over a stub gateway."""

from __future__ import annotations

import json
import math
from typing import Any

import openai.types as oai
import pytest

from museserve.api.openai import responses
from museserve.api.openai.completions_output import (
    CompletionChunks,
    CompletionShape,
    legacy_logprobs,
    text_completion_json,
)
from museserve.api.openai.completions_schemas import CompletionRequest
from museserve.api.openai.http_api import OpenAIHttpApi
from museserve.domain import (
    ChatChoice,
    ChatResult,
    ChoiceEnd,
    Finish,
    FinishReason,
    LogprobsDelta,
    PositionLogprobs,
    PromptLogprobs,
    RawPrompt,
    RunningUsage,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    Usage,
)
from tests.unit.test_openai_output import StubGateway, http_request, parse_sse, read_stream

USAGE = Usage(prompt_tokens=3, output_tokens=2)


def position(token: str, token_id: int, logprob: float, *alternatives: tuple[str, float]) -> PositionLogprobs:
    return PositionLogprobs(
        TokenLogprob(token, token_id, logprob), tuple(TokenLogprob(t, 0, v) for t, v in alternatives)
    )


# "Once upon" as three tokens: the first has no log probability (nothing precedes it).
PROMPT = (
    position("Once", 10, math.nan, ("The", -0.1)),
    position(" up", 11, -2.0, (" upon", -0.5)),
    position("on", 12, -0.25, ("on", -0.25)),
)
ANSWER = (position(" a", 13, -0.1, (" a", -0.1)), position(" time", 14, -float("inf"), (" day", -1.0)))


def validated(data: dict[str, Any]) -> dict[str, Any]:
    """Checked against our response model, and against the client's type with the nulls OpenAI's
    API sends and that type leaves out filled in: `finish_reason` on a stream chunk before its
    answer ends, and the first echoed prompt token's logprob. The client parses responses
    without validating them, so the nulls reach its users as they are."""
    responses.Completion.model_validate(data)
    choices = []
    for c in data["choices"]:
        logprobs = c["logprobs"] and {
            **c["logprobs"],
            "token_logprobs": [0.0 if v is None else v for v in c["logprobs"]["token_logprobs"]],
            "top_logprobs": [{} if v is None else v for v in c["logprobs"]["top_logprobs"]],
        }
        choices.append({**c, "finish_reason": c["finish_reason"] or "stop", "logprobs": logprobs})
    oai.Completion.model_validate({**data, "choices": choices})
    return data


def sse_json(lines: list[str]) -> list[dict[str, Any]]:
    """Lines of a stream not yet ended."""
    assert all(line.startswith("data: {") and line.endswith("\n\n") for line in lines)
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_a_completion_matches_the_official_type():
    result = ChatResult(" a time", "", (), USAGE, FinishReason.LENGTH, "muse-tiny")
    data = validated(text_completion_json(result, "rid", CompletionShape(False, "Once upon", False)))
    parsed = oai.Completion.model_validate(data)
    assert (parsed.id, parsed.object, parsed.model) == ("cmpl-rid", "text_completion", "muse-tiny")
    choice = parsed.choices[0]
    assert (choice.text, choice.finish_reason, choice.logprobs) == (" a time", "length", None)
    assert (parsed.usage.prompt_tokens, parsed.usage.completion_tokens, parsed.usage.total_tokens) == (3, 2, 5)


def test_echo_with_logprobs_lists_the_prompt_tokens_then_the_answers():
    result = ChatResult(" a time", "", (), USAGE, FinishReason.STOP, "m", ANSWER, prompt_logprobs=PROMPT)
    data = validated(text_completion_json(result, "rid", CompletionShape(True, "Once upon", True)))
    choice = data["choices"][0]
    assert choice["text"] == "Once upon a time"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["Once", " up", "on", " a", " time"]
    assert logprobs["token_logprobs"] == [None, -2.0, -0.25, -0.1, -9999.0]
    assert logprobs["top_logprobs"][0] is None
    assert logprobs["top_logprobs"][1] == {" upon": -0.5, " up": -2.0}  # the chosen token included
    assert logprobs["top_logprobs"][2] == {"on": -0.25}
    assert logprobs["text_offset"] == [0, 4, 7, 9, 11]
    assert [choice["text"][o:] for o in logprobs["text_offset"]][3] == " a time"


def test_echo_of_a_token_prompt_is_its_token_strings_and_logprobs_stay_out_when_not_asked():
    result = ChatResult(" a", "", (), USAGE, FinishReason.STOP, "m", prompt_logprobs=PROMPT)
    data = validated(text_completion_json(result, "rid", CompletionShape(True, None, False)))
    assert data["choices"][0]["text"] == "Once upon a" and data["choices"][0]["logprobs"] is None
    no_echo = validated(text_completion_json(result, "rid", CompletionShape(False, None, True)))
    assert no_echo["choices"][0]["text"] == " a" and no_echo["choices"][0]["logprobs"]["tokens"] == []


def test_n_answers_each_start_with_the_echo():
    choices = (ChatChoice(" a", "", (), FinishReason.STOP, ANSWER[:1]), ChatChoice(" b", "", (), FinishReason.LENGTH))
    result = ChatResult(" a", "", (), USAGE, FinishReason.STOP, "m", prompt_logprobs=PROMPT, choices=choices)
    data = validated(text_completion_json(result, "rid", CompletionShape(True, "Once upon", True, n=2)))
    assert [(c["index"], c["text"], c["finish_reason"]) for c in data["choices"]] == [
        (0, "Once upon a", "stop"),
        (1, "Once upon b", "length"),
    ]
    assert [len(c["logprobs"]["tokens"]) for c in data["choices"]] == [4, 3]


def test_legacy_offsets_start_where_asked():
    assert legacy_logprobs(ANSWER, 9)["text_offset"] == [9, 11]


# Two answers, echo with logprobs: the prompt's log probabilities first, then interleaved deltas.
N2_EVENTS: list[StreamEvent] = [
    PromptLogprobs(PROMPT),
    TextDelta(" a", 0),
    LogprobsDelta(ANSWER[:1], 0),
    TextDelta(" b", 1),
    LogprobsDelta(ANSWER[:1], 1),
    RunningUsage(Usage(prompt_tokens=3, output_tokens=2)),
    ChoiceEnd(1, FinishReason.STOP),
    TextDelta(" time", 0),
    LogprobsDelta(ANSWER[1:], 0),
    RunningUsage(Usage(prompt_tokens=3, output_tokens=3)),
    ChoiceEnd(0, FinishReason.LENGTH),
    Usage(prompt_tokens=3, output_tokens=3),
    Finish(FinishReason.LENGTH, "muse-tiny"),
]


def stream_chunks(stream: CompletionChunks, events: list[StreamEvent]) -> list[dict[str, Any]]:
    chunks = parse_sse(stream.start() + [line for e in events for line in stream.event(e)])
    return [validated(c) for c in chunks]


def test_a_stream_with_echo_opens_each_answer_with_the_prompt_and_its_logprobs():
    shape = CompletionShape(True, "Once upon", True, n=2)
    chunks = stream_chunks(CompletionChunks("rid", "muse-tiny", shape, include_usage=True), N2_EVENTS)
    by_index: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        by_index[choice["index"]].append(choice)
    for i, expected in ((0, "Once upon a time"), (1, "Once upon b")):
        choices = by_index[i]
        assert choices[0]["text"] == "Once upon" and choices[0]["logprobs"]["token_logprobs"][0] is None
        assert "".join(c["text"] for c in choices) == expected
        offsets = [o for c in choices if c["logprobs"] for o in c["logprobs"]["text_offset"]]
        assert offsets == sorted(offsets) and offsets[3] == len("Once upon")
    assert by_index[0][1]["logprobs"]["tokens"] == [" a"]  # a delta's text with its tokens
    assert [c["finish_reason"] for c in by_index[1]][-1] == "stop" and by_index[0][-1]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-rid" for c in chunks)


def test_a_stream_echoes_a_string_prompt_at_once_without_logprobs():
    stream = CompletionChunks("rid", "m", CompletionShape(True, "Hi", False), include_usage=False)
    (opening,) = sse_json(stream.start())
    assert opening["choices"][0] == {"index": 0, "text": "Hi", "logprobs": None, "finish_reason": None}
    events = [TextDelta(" there"), USAGE, Finish(FinishReason.STOP, "m")]
    chunks = parse_sse([line for e in events for line in stream.event(e)])
    assert [c["choices"][0]["text"] for c in chunks] == [" there", ""] and chunks[-1]["choices"][0]["finish_reason"]


def test_continuous_usage_on_every_completion_chunk():
    shape = CompletionShape(True, None, True, n=2)
    chunks = stream_chunks(CompletionChunks("rid", "m", shape, False, continuous_usage=True), N2_EVENTS)
    counts = [c["usage"]["completion_tokens"] for c in chunks]
    assert counts[:2] == [0, 0] and counts[2:4] == [2, 2] and counts[-1] == 3
    assert chunks[0]["choices"][0]["text"] == "Once upon"  # a token prompt: its token strings


def test_text_waiting_for_its_logprobs_is_sent_when_the_step_ends():
    stream = CompletionChunks("rid", "m", CompletionShape(False, "x", True), include_usage=False)
    assert stream.event(TextDelta("held")) == []
    (chunk,) = sse_json(stream.event(RunningUsage(USAGE)))
    assert chunk["choices"][0]["text"] == "held" and chunk["choices"][0]["logprobs"] is None


def completion_body(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "muse-tiny", "prompt": "Once upon", **fields})


async def test_the_handler_sends_a_raw_prompt_and_answers_in_both_forms():
    gateway = StubGateway(N2_EVENTS)
    api = OpenAIHttpApi(gateway)  # type: ignore[arg-type]
    response = await api.completions(completion_body(echo=True, logprobs=1, n=2), http_request())
    data = validated(json.loads(response.body))
    assert [c["text"] for c in data["choices"]] == ["Once upon a time", "Once upon b"]
    request = gateway.requests[0]
    assert request.prompt == RawPrompt(text="Once upon") and request.sampling.prompt_logprobs == 1
    streamed = await api.completions(completion_body(n=2, stream=True), http_request(**{"x-request-id": "r-9"}))
    assert streamed.media_type == "text/event-stream" and streamed.headers["x-request-id"] == "r-9"
    chunks = [validated(c) for c in parse_sse(await read_stream(streamed))]
    first = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == 0]
    assert "".join(c["text"] for c in first) == " a time"
    assert gateway.observer.requests == {("http", "OK"): 2}


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"model": "nope"}, 404, "model"),
        ({"prompt": ["a", "b"]}, 400, "prompt"),
        ({"suffix": "!"}, 400, "suffix"),
    ],
)
async def test_the_handler_refuses_with_the_field(fields, status, param):
    response = await OpenAIHttpApi(StubGateway(N2_EVENTS)).completions(completion_body(**fields), http_request())  # type: ignore[arg-type]
    assert response.status_code == status and json.loads(response.body)["error"]["param"] == param
