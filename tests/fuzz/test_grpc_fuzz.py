"""Arbitrary but well-typed ChatRequests against Chat, ChatStream and CountTokens, through
the Ray Serve proxy and the direct port alternately. Whatever is sent, the answer is a
status the client can act on (never INTERNAL or UNKNOWN), no status shows server internals,
and the server keeps answering health checks."""

from __future__ import annotations

import json
import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from museserve.v1 import chat_pb2 as pb
from tests.fuzz.conftest import fuzz_cases
from tests.fuzz.grpc_calls import AUTH, assert_healthy, assert_not_a_fault, call, call_raw

pytestmark = pytest.mark.integration

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Any code point protobuf will hold: it refuses lone surrogates when a message is built, so
# invalid UTF-8 on the wire has its own test below, with hand-made bytes.
text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "🙂" * 30, "a" * 3000]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.0, 3.4e38, -3.4e38, 1e-45, math.nan, math.inf, -math.inf]),
)
small_or_extreme = st.one_of(st.integers(-2, 4), st.sampled_from([0, -1, 2**31 - 1, -(2**31), 2048, 4096]), INT32)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_schema_like = st.one_of(
    json_values.map(json.dumps),
    st.builds(
        lambda props, required: json.dumps({"type": "object", "properties": props, "required": required}),
        st.dictionaries(
            st.text(max_size=8), st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "x"])})
        ),
        st.lists(st.text(max_size=8), max_size=3),
    ),
    text,
)
mime_types = st.one_of(
    st.sampled_from(["image/png", "image/jpeg", "image/webp", "image/gif", "", "text/plain", "image/png; x=1"]),
    text,
)
audio_formats = st.one_of(st.sampled_from(["wav", "flac", "WAV", "mp3", "", "ogg"]), text)
media_bytes = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(
        [b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WAVE", b"fLaC", b"\xff\xd8\xff", b"RIFF....WEBPVP8 "]
    ).flatmap(lambda magic: st.binary(max_size=128).map(lambda tail: magic + tail)),
)

image = st.one_of(
    st.builds(lambda d, m: pb.Image(data=d, mime_type=m), media_bytes, mime_types),
    st.builds(
        lambda u, m: pb.Image(url=u, mime_type=m),
        st.one_of(
            text,
            st.sampled_from(["data:image/png;base64,AAAA", "data:,", "https://127.0.0.1/x.png", "file:///etc/passwd"]),
        ),
        mime_types,
    ),
)
content_part = st.one_of(
    text.map(lambda t: pb.ContentPart(text=t)),
    image.map(lambda i: pb.ContentPart(image=i)),
    st.builds(lambda d, f: pb.ContentPart(audio=pb.Audio(data=d, format=f)), media_bytes, audio_formats),
    st.just(pb.ContentPart()),
)
tool_call = st.builds(pb.ToolCall, id=text, name=text, arguments_json=st.one_of(json_values.map(json.dumps), text))
message = st.builds(
    pb.Message,
    role=st.one_of(st.sampled_from([1, 2, 2, 2, 3, 4]), INT32),
    content=st.lists(content_part, max_size=3),
    name=text,
    tool_call_id=text,
    tool_calls=st.lists(tool_call, max_size=2),
)
tool = st.builds(
    pb.Tool,
    name=st.one_of(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True), text),
    description=text,
    parameters_json_schema=json_schema_like,
)


def optional(strategy):
    return st.one_of(st.none(), strategy)


@st.composite
def sampling(draw) -> pb.SamplingParams:
    params = pb.SamplingParams(
        stop=draw(st.lists(text, max_size=10)),
        stop_token_ids=draw(st.lists(INT32, max_size=18)),
        logprobs=draw(st.booleans()),
        top_logprobs=draw(small_or_extreme),
    )
    # Small answers keep each case cheap; the extremes still come up now and then.
    max_tokens = draw(st.one_of(st.integers(1, 4), st.integers(1, 4), small_or_extreme, st.none()))
    if max_tokens is not None:
        params.max_output_tokens = max_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = draw(optional(floats))
        if value is not None:
            setattr(params, name, value)
    for name, ints in (("top_k", small_or_extreme), ("seed", INT64)):
        value = draw(optional(ints))
        if value is not None:
            setattr(params, name, value)
    return params


@st.composite
def mode(draw) -> pb.ModeParams:
    params = pb.ModeParams(mode=draw(st.one_of(st.integers(0, 3), INT32)))
    budget, agents = draw(optional(small_or_extreme)), draw(optional(st.one_of(st.integers(0, 9), INT32)))
    if budget is not None:
        params.thinking_budget = budget
    if agents is not None:
        params.num_agents = agents
    return params


@st.composite
def response_format(draw) -> pb.ResponseFormat:
    fmt = pb.ResponseFormat(kind=draw(st.one_of(st.integers(0, 3), INT32)), json_schema=draw(json_schema_like))
    strict = draw(optional(st.booleans()))
    if strict is not None:
        fmt.strict = strict
    return fmt


@st.composite
def chat_requests(draw) -> pb.ChatRequest:
    return pb.ChatRequest(
        model=draw(
            st.one_of(st.sampled_from(["", "", "muse-tiny", "muse-ab", "muse-cand", "muse-tiny:thinking"]), text)
        ),
        messages=draw(st.lists(message, max_size=4)),
        tools=draw(st.lists(tool, max_size=3)),
        tool_choice=pb.ToolChoice(kind=draw(st.one_of(st.integers(0, 4), INT32)), name=draw(text)),
        sampling=draw(sampling()),
        mode=draw(mode()),
        request_id=draw(st.one_of(st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True), text)),
        response_format=draw(response_format()),
    )


_metadata_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
extra_metadata = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(["x-user-id", "x-request-id", "x-api-key"]),
            st.from_regex(r"x-fuzz-[a-z0-9_.-]{1,12}", fullmatch=True),
        ),
        _metadata_value,
    ),
    max_size=3,
)


@given(
    request=chat_requests(),
    method=st.sampled_from(["Chat", "ChatStream", "CountTokens"]),
    direct=st.booleans(),
    metadata=extra_metadata,
)
@settings(
    max_examples=fuzz_cases(0.4),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_any_well_typed_request_gets_a_status_the_client_can_act_on(
    grpc_address: str, direct_grpc_address: str, request: pb.ChatRequest, method: str, direct: bool, metadata
):
    address = direct_grpc_address if direct else grpc_address
    outcome = call(address, method, request, metadata=(*AUTH, *metadata), timeout=3.0)
    assert_not_a_fault(outcome, sent=str(request) + str(metadata))
    assert_healthy(address)


MARK = "@@@"  # 3 bytes on the wire, replaced by 3 bytes that are not UTF-8
NOT_UTF8 = (b"\xed\xa0\x80", b"\xff\xfe\xfd", b"\xc0\x80a")


def _with_mark(where: str) -> pb.ChatRequest:
    request = pb.ChatRequest(
        messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])],
        sampling=pb.SamplingParams(max_output_tokens=2),
    )
    if where == "text":
        request.messages[0].content[0].text = MARK
    elif where == "model":
        request.model = MARK
    elif where == "request_id":
        request.request_id = MARK
    elif where == "tool_name":
        request.tools.add(name=MARK, parameters_json_schema="{}")
    elif where == "stop":
        request.sampling.stop.append(MARK)
    return request


@pytest.mark.parametrize("where", ["text", "model", "request_id", "tool_name", "stop"])
@pytest.mark.parametrize("method", ["Chat", "ChatStream", "CountTokens"])
@pytest.mark.parametrize("direct", [False, True], ids=["proxy", "direct"])
def test_a_string_field_that_is_not_utf8_is_refused_not_a_fault(
    grpc_address: str, direct_grpc_address: str, where: str, method: str, direct: bool
):
    address = direct_grpc_address if direct else grpc_address
    wire = _with_mark(where).SerializeToString()
    for bad in NOT_UTF8:
        outcome = call_raw(address, method, wire.replace(MARK.encode(), bad))
        assert_not_a_fault(outcome)
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)
        assert "UTF-8" in outcome.details and outcome.violation_fields() == ["request"]
    assert_healthy(address)
