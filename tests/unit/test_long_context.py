"""The 262,144-token context window: the limit passes validation, one more token does not."""

from __future__ import annotations

import pytest

from museserve.config import MediaLimits, PoolConfig
from museserve.domain import ChatRequest, Message, Role, TextPart
from museserve.errors import InvalidArgument
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer

CONTEXT = 262_144
POOL = PoolConfig(name="muse-long", engine={"context_length": CONTEXT, "max_output_tokens": 4096})


@pytest.fixture(scope="module")
def preprocessor() -> Preprocessor:
    return Preprocessor(PoolModel.muse(MuseTokenizer.load(None)), MediaLimits(), request_timeout_s=60)


def request_of(preprocessor: Preprocessor, prompt_tokens: int) -> ChatRequest:
    """A one-message request whose rendered prompt is exactly `prompt_tokens` long."""

    def make(repeats: int) -> ChatRequest:
        return ChatRequest("long", (Message(Role.USER, (TextPart(" x" * repeats),)),))

    overhead = preprocessor.count(make(1), POOL).prompt_tokens - 1  # " x" is one token
    request = make(prompt_tokens - overhead)
    assert preprocessor.count(request, POOL).prompt_tokens == prompt_tokens
    return request


def test_a_prompt_that_leaves_one_position_passes(preprocessor: Preprocessor):
    prepared = preprocessor.prepare(request_of(preprocessor, CONTEXT - 1), POOL)
    assert prepared.num_prompt_tokens == CONTEXT - 1
    assert prepared.max_output_tokens == 1


def test_a_prompt_filling_the_window_is_refused(preprocessor: Preprocessor):
    with pytest.raises(InvalidArgument) as caught:
        preprocessor.prepare(request_of(preprocessor, CONTEXT), POOL)
    assert caught.value.field == "messages"
    assert "262143" in caught.value.message
