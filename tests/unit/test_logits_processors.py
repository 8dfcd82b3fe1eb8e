"""Penalties, stop token ids and the fields that carry them from the API to the engine."""

from __future__ import annotations

import pytest
import torch

from museserve.api.convert import request_from_pb
from museserve.config import PoolConfig, RequestLimits
from museserve.domain import ChatRequest, FinishReason, Identity, Message, Role, SamplingParams, TextPart
from museserve.engine.request_state import RequestState
from museserve.errors import InvalidArgument
from museserve.gateway.validation import validate_request
from museserve.messages import PreparedRequest
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer
from museserve.runner.logits_processors import Penalties, processors_for
from museserve.v1 import chat_pb2 as pb
from tests.support import prepared_request


def prepared(**overrides) -> PreparedRequest:
    return prepared_request(**overrides)


def test_presence_and_frequency_penalties_follow_the_openai_formula():
    logits = torch.zeros(6)
    out = Penalties(presence=0.5, frequency=0.25)([1], [2, 2, 3], logits)
    # token 2: 2 appearances -> 0.5 + 2 * 0.25; token 3: 0.5 + 0.25; prompt token 1 untouched
    assert out.tolist() == pytest.approx([0.0, 0.0, -1.0, -0.75, 0.0, 0.0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    out = Penalties(repetition=2.0)([0], [1], logits)
    assert out.tolist() == pytest.approx([1.0, -4.0, 2.0, -2.0])


def test_no_processor_for_default_sampling():
    assert processors_for(prepared()) == ()
    assert processors_for(prepared(frequency_penalty=0.1)) == (Penalties(frequency=0.1),)


def test_stop_token_ids_end_the_answer_and_are_counted():
    tokenizer = MuseTokenizer.load(None)
    hello = tokenizer.encode_text(" hello")
    state = RequestState(prepared(stop_token_ids=(500,)), tokenizer, MuseFormat(tokenizer).markers)
    for token in hello:
        state.append(token)
    state.append(500)
    assert state.finish is FinishReason.STOP
    assert state.output_tokens == len(hello) + 1
    assert state.take_chunk().text == " hello"


def test_new_sampling_fields_convert_from_protobuf_with_defaults_when_unset():
    message = pb.ChatRequest(messages=[pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(text="hi")])])
    unset = request_from_pb(message, "r", Identity()).sampling
    assert (unset.presence_penalty, unset.frequency_penalty, unset.repetition_penalty) == (0.0, 0.0, None)
    message.sampling.presence_penalty = 0.5
    message.sampling.frequency_penalty = -0.5
    message.sampling.repetition_penalty = 1.25
    message.sampling.stop_token_ids.extend([7, 9])
    s = request_from_pb(message, "r", Identity()).sampling
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty, s.stop_token_ids) == (
        0.5,
        -0.5,
        1.25,
        (7, 9),
    )


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (SamplingParams(presence_penalty=2.5), "sampling.presence_penalty"),
        (SamplingParams(frequency_penalty=-2.5), "sampling.frequency_penalty"),
        (SamplingParams(repetition_penalty=0.0), "sampling.repetition_penalty"),
        (SamplingParams(repetition_penalty=3.0), "sampling.repetition_penalty"),
        (SamplingParams(stop_token_ids=tuple(range(17))), "sampling.stop_token_ids"),
        (SamplingParams(stop_token_ids=(3, -1)), "sampling.stop_token_ids[1]"),
    ],
)
def test_penalty_and_stop_token_limits_name_the_field(sampling: SamplingParams, field: str):
    request = ChatRequest("r", (Message(Role.USER, (TextPart("hi"),)),), sampling=sampling)
    with pytest.raises(InvalidArgument) as caught:
        validate_request(request, PoolConfig(name="p"), RequestLimits())
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        (SamplingParams(logprobs=True, top_logprobs=21), "sampling.top_logprobs"),
        (SamplingParams(logprobs=True, top_logprobs=-1), "sampling.top_logprobs"),
        (SamplingParams(logprobs=False, top_logprobs=2), "sampling.top_logprobs"),
    ],
)
def test_logprob_limits_name_the_field(sampling: SamplingParams, field: str):
    request = ChatRequest("r", (Message(Role.USER, (TextPart("hi"),)),), sampling=sampling)
    with pytest.raises(InvalidArgument) as caught:
        validate_request(request, PoolConfig(name="p"), RequestLimits())
    assert caught.value.field == field


def test_logprobs_travel_to_protobuf_events_and_responses():
    from museserve.api.convert import event_to_pb, result_to_pb
    from museserve.domain import ChatResult, LogprobsDelta, PositionLogprobs, TokenLogprob, Usage

    position = PositionLogprobs(TokenLogprob("a", 7, -0.5), (TokenLogprob("a", 7, -0.5), TokenLogprob("b", 8, -1.5)))
    event = event_to_pb(LogprobsDelta((position,)), "r")
    assert event.WhichOneof("event") == "logprobs"
    assert event.logprobs.positions[0].chosen.token_id == 7
    assert [t.token for t in event.logprobs.positions[0].top] == ["a", "b"]
    result = ChatResult("a", "", (), Usage(), FinishReason.STOP, "m", (position,))
    assert result_to_pb(result, "r").logprobs[0].chosen.logprob == pytest.approx(-0.5)
