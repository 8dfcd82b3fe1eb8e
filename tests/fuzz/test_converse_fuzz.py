"""Arbitrary Converse calls: message sequences in any order (start repeated or missing, markers
before speech), any declared rate and encoding, chunks of any size or alignment, and message
bytes that do not parse, through the Ray Serve proxy and the direct port alternately. Whatever is
sent, the call ends with a status the client can act on (never INTERNAL or UNKNOWN), no status
shows server internals, and the server keeps answering health checks."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from museserve.v1 import chat_pb2 as pb
from tests.fuzz.conftest import fuzz_cases
from tests.fuzz.grpc_calls import AUTH, Outcome, assert_healthy, assert_not_a_fault, channel, stub

pytestmark = pytest.mark.integration

RATES = st.one_of(st.sampled_from([16000, 8000, 44100, 48000, 0, -1, 7999, 96001]), st.integers(-(2**31), 2**31 - 1))
ENCODINGS = st.one_of(st.sampled_from([pb.AUDIO_ENCODING_PCM16, pb.AUDIO_ENCODING_UNSPECIFIED]), st.integers(0, 7))
CHUNKS = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 1200).map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256)),  # up to 1200 bytes, odd too
    st.sampled_from([b"", b"\x00", b"\x00" * 3200, b"\x7f\xff" * 800, b"\x80\x00" * 800]),
)


@st.composite
def starts(draw) -> pb.ConverseRequest:
    request = pb.ChatRequest(
        model=draw(st.sampled_from(["muse-tiny", "", "nonexistent", "smollm2-135m"])),
        mode=pb.ModeParams(mode=draw(st.sampled_from([pb.MODE_INSTANT, pb.MODE_THINKING, pb.MODE_CONTEMPLATING, 0]))),
        sampling=pb.SamplingParams(max_output_tokens=draw(st.integers(-1, 4)), temperature=0.0),
        messages=[pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=draw(st.text(max_size=20)))])],
    )
    start = pb.SessionStart(
        request=request, audio_format=pb.AudioFormat(encoding=draw(ENCODINGS), sample_rate_hz=draw(RATES))
    )
    if draw(st.booleans()):
        start.server_vad_silence_ms = draw(st.integers(-5, 6000))
    return pb.ConverseRequest(start=start)


messages = st.one_of(
    starts(),
    CHUNKS.map(lambda data: pb.ConverseRequest(audio=pb.AudioChunk(data=data))),
    st.just(pb.ConverseRequest(end_of_speech=pb.EndOfSpeech())),
    st.just(pb.ConverseRequest()),
)


@st.composite
def sessions(draw) -> list[pb.ConverseRequest]:
    """Mostly a start first (so the limits behind it are reached), then anything."""
    head = [draw(starts())] if draw(st.integers(0, 4)) else []
    return head + draw(st.lists(messages, max_size=8))


def converse(address: str, sent: list[pb.ConverseRequest], timeout: float = 10.0) -> Outcome:
    try:
        for _ in stub(address).Converse(iter(sent), timeout=timeout, metadata=AUTH):
            pass
        return Outcome(grpc.StatusCode.OK, "", ())
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()), e)


@given(sent=sessions(), direct=st.booleans())
@settings(
    max_examples=fuzz_cases(0.1),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_any_converse_sequence_gets_a_status_the_client_can_act_on(
    grpc_address: str, direct_grpc_address: str, sent: list[pb.ConverseRequest], direct: bool
) -> None:
    address = direct_grpc_address if direct else grpc_address
    outcome = converse(address, sent)
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, "a call that ends its input must end"
    assert_not_a_fault(outcome, sent=str(sent))
    assert_healthy(address)


@given(wire=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=4), direct=st.booleans())
@settings(max_examples=fuzz_cases(0.02), deadline=None, database=None)
def test_message_bytes_that_do_not_parse_are_refused_not_a_fault(
    grpc_address: str, direct_grpc_address: str, wire: list[bytes], direct: bool
) -> None:
    address = direct_grpc_address if direct else grpc_address
    identity = lambda b: b  # noqa: E731
    call = channel(address).stream_stream(
        "/museserve.v1.ChatService/Converse", request_serializer=identity, response_deserializer=identity
    )
    try:
        for _ in call(iter(wire), timeout=10, metadata=AUTH):
            pass
        outcome = Outcome(grpc.StatusCode.OK, "", ())
    except grpc.RpcError as e:
        outcome = Outcome(e.code(), e.details() or "", tuple(e.trailing_metadata() or ()), e)
    assert_not_a_fault(outcome)
    assert_healthy(address)
