"""The OpenAI-compatible API under fuzzing: schemathesis from the served OpenAPI document
(every operation, then the Responses API's alone: create, retrieve, delete, input items),
then hand-made raw bodies for /v1/chat/completions (malformed JSON, wrong types, huge
numbers, deep nesting). No request gets a 5xx or shows server internals; every 4xx is in
OpenAI's error shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.fuzz.conftest import fuzz_cases
from tests.fuzz.grpc_calls import LEAKS
from tests.integration.conftest import TEST_KEY

pytestmark = pytest.mark.integration

HEADERS = {"Authorization": f"Bearer {TEST_KEY}", "x-user-id": "fuzzer"}
SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def no_traceback(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """No response shows server internals (unless the client sent that text itself)."""
    body = response.content.decode("utf-8", "replace") if response.content else ""
    sent = json.dumps(case.body, default=str) + str(case.query) + str(case.path_parameters) + str(case.headers)
    for leak in LEAKS:
        assert leak not in body or leak in sent, f"the response leaks {leak!r}: {body[:500]}"
    return None


@pytest.fixture(scope="module")
def openapi(http_base: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{http_base}/openapi.json")


def _survives_fuzzing(schema: schemathesis.BaseSchema, http_base: str, share: float) -> None:
    strategy = st.one_of(
        schema.as_strategy(schemathesis.GenerationMode.POSITIVE),
        schema.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(max_examples=fuzz_cases(share), **SETTINGS)
    def check(case: schemathesis.Case) -> None:
        if isinstance(case.body, dict) and case.path == "/v1/responses":
            case.body.setdefault("max_output_tokens", 2)  # its only budget field
        elif isinstance(case.body, dict) and case.path == "/v1/completions":
            case.body.setdefault("max_tokens", 2)  # its only budget field (OpenAI's default is 16)
        elif isinstance(case.body, dict) and "max_tokens" not in case.body:
            case.body.setdefault("max_completion_tokens", 2)  # keeps each served case cheap
        case.call_and_validate(
            base_url=http_base, headers=HEADERS, checks=[not_a_server_error, no_traceback], timeout=30
        )

    check()


def test_every_operation_of_the_openapi_document_survives_fuzzing(openapi, http_base: str):
    _survives_fuzzing(openapi, http_base, 0.2)


def test_the_responses_api_survives_fuzzing(openapi, http_base: str):
    """POST /v1/responses, GET and DELETE /v1/responses/{response_id}, GET its input_items."""
    responses = openapi.include(path_regex="^/v1/responses")
    assert len(list(responses.get_all_operations())) == 4
    _survives_fuzzing(responses, http_base, 0.1)


BASE = {"model": "muse-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from([10**400, -(10**400), 2**63, 2**31, -(2**31) - 1, 1e308]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
FIELDS = sorted(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
     "stream", "stream_options", "tools", "tool_choice", "response_format", "logprobs", "top_logprobs",
     "reasoning_effort", "mode", "thinking_budget", "num_agents", "top_k", "repetition_penalty", "user",
     "metadata", "presence_penalty", "frequency_penalty", "logit_bias", "modalities"}
)  # fmt: skip
MESSAGE_PATHS = ["role", "content", "name", "tool_calls", "tool_call_id"]


@st.composite
def wrong_types(draw) -> str:
    body = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        messages = body.get("messages")
        # A message field, while an earlier step has left `messages` a list holding a message.
        if isinstance(messages, list) and messages and isinstance(messages[0], dict) and draw(st.booleans()):
            messages[0][draw(st.sampled_from(MESSAGE_PATHS))] = draw(json_values)
        else:
            body[draw(st.sampled_from(FIELDS))] = draw(json_values)
    return json.dumps(body)


def _nested(depth: int, kind: str) -> str:
    inner = "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    return json.dumps({**BASE, "metadata": None}).replace('"metadata": null', f'"metadata": {inner}')


raw_bodies = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.builds(lambda cut: json.dumps(BASE)[:cut], st.integers(0, len(json.dumps(BASE)))),
    wrong_types(),
    st.builds(_nested, st.sampled_from([10, 100, 1000, 10_000, 100_000]), st.sampled_from(["list", "object"])),
    st.sampled_from(
        [
            json.dumps(BASE).replace('"max_tokens": 2', '"max_tokens": 1e999'),
            json.dumps(BASE).replace('"max_tokens": 2', '"max_tokens": NaN'),
            json.dumps(BASE).replace('"max_tokens": 2', '"max_tokens": ' + "9" * 5000),
            json.dumps(BASE).replace('"max_tokens": 2', '"temperature": -Infinity'),
            json.dumps(BASE).replace('"hi"', '"\\ud800"'),
            json.dumps(BASE).replace('"hi"', '"\\u0000"'),
            json.dumps(BASE) + json.dumps(BASE),
            "null",
            "[]",
            '"x"',
            "",
        ]
    ),
)


def _assert_openai_error(response: requests.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str)
    assert error["param"] is None or isinstance(error["param"], str)


@given(body=raw_bodies, content_type=st.sampled_from(["application/json", "application/json", "text/plain", ""]))
@settings(max_examples=fuzz_cases(0.3), **SETTINGS)
def test_any_raw_body_gets_a_client_error_in_openai_shape_or_an_answer(http_base: str, body: str, content_type: str):
    headers = {**HEADERS, **({"content-type": content_type} if content_type else {})}
    response = requests.post(
        f"{http_base}/v1/chat/completions", data=body.encode("utf-8", "surrogatepass"), headers=headers, timeout=30
    )
    assert response.status_code < 500, (response.status_code, response.text[:500])
    for leak in LEAKS:
        assert leak not in response.text or leak in body, f"leaks {leak!r}: {response.text[:500]}"
    if 400 <= response.status_code < 500:
        _assert_openai_error(response)
    assert requests.get(f"{http_base}/healthz", timeout=10).status_code == 200
