from __future__ import annotations

import time

import pytest

from museserve.config import EngineConfig, MediaLimits, PoolConfig
from museserve.domain import (
    AudioPart,
    ChatRequest,
    Identity,
    ImagePart,
    Message,
    Mode,
    ModeParams,
    Role,
    SamplingParams,
    TextPart,
)
from museserve.errors import InvalidArgument, MuseError
from museserve.messages import PreparedRequest
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer

CONTEXT = 256
POOL = PoolConfig(
    name="muse-small-window",
    engine=EngineConfig(
        context_length=CONTEXT, max_output_tokens=64, default_max_output_tokens=16, default_thinking_budget=8
    ),
)
MEDIA = MediaLimits(max_image_bytes=100, max_audio_bytes=50)
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def tokenizer() -> MuseTokenizer:
    return MuseTokenizer.load(None)


@pytest.fixture(scope="module")
def pre(tokenizer: MuseTokenizer) -> Preprocessor:
    return Preprocessor(PoolModel.muse(tokenizer), MEDIA, request_timeout_s=TIMEOUT_S)


def chat(
    *parts: TextPart | ImagePart | AudioPart,
    mode: Mode = Mode.INSTANT,
    budget: int | None = None,
    **sampling: object,
) -> ChatRequest:
    return ChatRequest(
        request_id="req-1",
        messages=(Message(Role.USER, parts or (TextPart("hello there"),)),),
        sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        mode=ModeParams(mode, thinking_budget=budget),
        identity=Identity(tenant="acme", user="bob"),
    )


def long_text(n: int) -> TextPart:
    """Text the bundled tokenizer encodes as exactly n tokens."""
    return TextPart(" x" * n)


def request_with_prompt(pre: Preprocessor, target: int, mode: Mode = Mode.INSTANT, **sampling: object) -> ChatRequest:
    """A request whose rendered prompt is exactly `target` tokens."""
    base = pre.count(chat(long_text(1), mode=mode), POOL).prompt_tokens
    request = chat(long_text(target - base + 1), mode=mode, **sampling)
    assert pre.count(request, POOL).prompt_tokens == target
    return request


def prepare_error(pre: Preprocessor, request: ChatRequest) -> MuseError:
    with pytest.raises(MuseError) as info:
        pre.prepare(request, POOL)
    return info.value


# ---- budgets ----


def test_instant_defaults(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    prepared = pre.prepare(chat(), POOL)
    assert prepared.mode is Mode.INSTANT
    assert prepared.thinking_budget == 0
    assert prepared.max_output_tokens == 16
    assert prepared.pool == "muse-small-window"
    assert prepared.prompt_token_ids[0] == tokenizer.bos_id
    assert prepared.prompt_token_ids[-3:] == (tokenizer.assistant_id, tokenizer.think_id, tokenizer.think_end_id)


def test_thinking_uses_the_default_budget(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    prepared = pre.prepare(chat(mode=Mode.THINKING), POOL)
    assert prepared.mode is Mode.THINKING
    assert prepared.thinking_budget == 8
    assert prepared.max_output_tokens == 16
    assert prepared.prompt_token_ids[-2:] == (tokenizer.assistant_id, tokenizer.think_id)


def test_thinking_budget_from_the_request(pre: Preprocessor) -> None:
    assert pre.prepare(chat(mode=Mode.THINKING, budget=40), POOL).thinking_budget == 40


def test_zero_budget_renders_like_instant(pre: Preprocessor) -> None:
    thinking_off = pre.prepare(chat(mode=Mode.THINKING, budget=0), POOL)
    instant = pre.prepare(chat(), POOL)
    thinking_on = pre.prepare(chat(mode=Mode.THINKING), POOL)
    assert thinking_off.thinking_budget == 0
    assert thinking_off.prompt_token_ids == instant.prompt_token_ids
    assert thinking_on.prompt_token_ids == instant.prompt_token_ids[:-1]


def test_explicit_max_output_is_kept(pre: Preprocessor) -> None:
    assert pre.prepare(chat(max_output_tokens=50), POOL).max_output_tokens == 50
    prepared = pre.prepare(chat(mode=Mode.THINKING, budget=30, max_output_tokens=3), POOL)
    assert (prepared.thinking_budget, prepared.max_output_tokens) == (30, 3)


# ---- the context window ----


def test_prompt_over_the_window(pre: Preprocessor) -> None:
    error = prepare_error(pre, chat(long_text(400)))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages"


def test_prompt_filling_the_window_is_refused(pre: Preprocessor) -> None:
    error = prepare_error(pre, request_with_prompt(pre, CONTEXT))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages"
    assert "255" in error.message


def test_prompt_one_below_the_window_gets_one_token(pre: Preprocessor) -> None:
    prepared = pre.prepare(request_with_prompt(pre, CONTEXT - 1), POOL)
    assert prepared.num_prompt_tokens == CONTEXT - 1
    assert prepared.max_output_tokens == 1


def test_explicit_output_over_the_window(pre: Preprocessor) -> None:
    request = request_with_prompt(pre, 200, mode=Mode.THINKING, max_output_tokens=49)  # 200 + 8 + 49 = 257
    error = prepare_error(pre, request)
    assert isinstance(error, InvalidArgument)
    assert error.field == "sampling.max_output_tokens"


def test_explicit_output_exactly_filling_the_window(pre: Preprocessor) -> None:
    # 200 prompt + 8 reasoning + 1 closing marker + 47 output = 256
    prepared = pre.prepare(request_with_prompt(pre, 200, mode=Mode.THINKING, max_output_tokens=47), POOL)
    assert (prepared.thinking_budget, prepared.max_output_tokens) == (8, 47)
    one_more = request_with_prompt(pre, 200, mode=Mode.THINKING, max_output_tokens=48)
    assert prepare_error(pre, one_more).field == "sampling.max_output_tokens"


def test_explicit_output_with_explicit_budget_over_the_window(pre: Preprocessor) -> None:
    request = request_with_prompt(pre, 200, mode=Mode.THINKING, max_output_tokens=10)
    request = ChatRequest(
        request_id=request.request_id,
        messages=request.messages,
        sampling=request.sampling,
        mode=ModeParams(Mode.THINKING, thinking_budget=47),  # 200 + 47 + 10 = 257
    )
    assert prepare_error(pre, request).field == "sampling.max_output_tokens"


@pytest.mark.parametrize("prompt_tokens", [230, 240, 245, 250, 252, 253, 254, 255])
@pytest.mark.parametrize("mode", [Mode.INSTANT, Mode.THINKING])
def test_defaults_are_clamped_near_the_window(pre: Preprocessor, prompt_tokens: int, mode: Mode) -> None:
    request = request_with_prompt(pre, prompt_tokens, mode=mode)
    if mode is Mode.THINKING and prompt_tokens == CONTEXT - 1:
        # No room for reasoning; closing the segment takes the last position.
        assert prepare_error(pre, request).field == "messages"
        return
    prepared = pre.prepare(request, POOL)
    budget_closed = mode is Mode.THINKING and prepared.thinking_budget == 0
    assert prepared.num_prompt_tokens == prompt_tokens + (1 if budget_closed else 0)
    assert 1 <= prepared.max_output_tokens <= 16
    assert 0 <= prepared.thinking_budget <= (8 if mode is Mode.THINKING else 0)
    reasoning_positions = prepared.thinking_budget + 1 if prepared.thinking_budget else 0
    assert prepared.num_prompt_tokens + reasoning_positions + prepared.max_output_tokens <= CONTEXT


def test_defaults_untouched_far_from_the_window(pre: Preprocessor) -> None:
    prepared = pre.prepare(request_with_prompt(pre, 231, mode=Mode.THINKING), POOL)  # 231 + 8 + 1 + 16 = 256
    assert (prepared.thinking_budget, prepared.max_output_tokens) == (8, 16)
    clamped = pre.prepare(request_with_prompt(pre, 232, mode=Mode.THINKING), POOL)
    assert (clamped.thinking_budget, clamped.max_output_tokens) == (8, 15)


def test_clamped_zero_budget_closes_the_reasoning_segment(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    prepared = pre.prepare(request_with_prompt(pre, CONTEXT - 2, mode=Mode.THINKING), POOL)
    assert prepared.thinking_budget == 0
    assert prepared.prompt_token_ids[-1] == tokenizer.think_end_id


# ---- count ----


@pytest.mark.parametrize("mode", [Mode.INSTANT, Mode.THINKING])
def test_count_matches_prepare(pre: Preprocessor, mode: Mode) -> None:
    request = chat(TextPart("Count me, please: 1 2 3."), mode=mode)
    count = pre.count(request, POOL)
    assert count.prompt_tokens == pre.prepare(request, POOL).num_prompt_tokens
    assert count.context_length == CONTEXT
    assert count.pool == "muse-small-window"


def test_count_does_not_refuse_a_long_prompt(pre: Preprocessor) -> None:
    request = chat(long_text(1000))
    count = pre.count(request, POOL)
    assert count.prompt_tokens > 1000
    assert count.context_length == CONTEXT
    with pytest.raises(InvalidArgument):
        pre.prepare(request, POOL)


# ---- media ----


def test_image_over_the_limit(pre: Preprocessor) -> None:
    error = prepare_error(pre, chat(TextPart("see"), ImagePart(data=b"\0" * 101)))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages[0].content[1].image.data"


def test_image_that_is_no_image_names_the_part(pre: Preprocessor) -> None:
    error = prepare_error(pre, chat(TextPart("see"), ImagePart(data=b"\0" * 100)))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages[0].content[1].image"


def test_image_url_is_refused_when_urls_are_off(pre: Preprocessor) -> None:
    error = prepare_error(pre, chat(ImagePart(url="https://example.com/x.png")))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages[0].content[0].image.url"


def test_audio_over_the_limit(pre: Preprocessor) -> None:
    error = prepare_error(pre, chat(TextPart("hear"), TextPart("this"), AudioPart(b"\0" * 51, "wav")))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages[0].content[2].audio.data"


def test_audio_that_is_no_audio_names_the_part(pre: Preprocessor) -> None:
    error = prepare_error(pre, chat(TextPart("hear"), AudioPart(b"\0" * 50, "flac")))
    assert isinstance(error, InvalidArgument)
    assert error.field == "messages[0].content[1].audio"


def test_count_checks_media_too(pre: Preprocessor) -> None:
    with pytest.raises(InvalidArgument) as info:
        pre.count(chat(ImagePart(data=b"\0" * 101)), POOL)
    assert info.value.field == "messages[0].content[0].image.data"


def test_media_in_a_later_message(pre: Preprocessor) -> None:
    request = ChatRequest(
        request_id="r",
        messages=(
            Message(Role.SYSTEM, (TextPart("sys"),)),
            Message(Role.USER, (TextPart("look"), ImagePart(data=b"png"))),
        ),
    )
    assert prepare_error(pre, request).field == "messages[1].content[1].image"


def test_contemplating_takes_the_pools_default_number_of_agents(pre: Preprocessor) -> None:
    wide = POOL.model_copy(update={"engine": POOL.engine.model_copy(update={"context_length": 8192})})
    prepared = pre.prepare(chat(mode=Mode.CONTEMPLATING), wide)
    assert prepared.mode is Mode.CONTEMPLATING and prepared.num_agents == wide.contemplating.default_agents
    with pytest.raises(InvalidArgument) as refused:  # agents and synthesis cannot fit a 256-token window
        pre.prepare(chat(mode=Mode.CONTEMPLATING), POOL)
    assert refused.value.field == "mode.num_agents"
    assert pre.prepare(chat(mode=Mode.INSTANT), POOL).num_agents == 0


# ---- copied fields ----


def test_deadline_is_now_plus_timeout(pre: Preprocessor) -> None:
    before = time.time()
    prepared = pre.prepare(chat(), POOL)
    after = time.time()
    assert before + TIMEOUT_S <= prepared.deadline_unix_s <= after + TIMEOUT_S


def test_sampling_fields_are_copied(pre: Preprocessor) -> None:
    prepared = pre.prepare(chat(temperature=0.3, top_p=0.8, top_k=5, seed=99, stop=("END", "\n")), POOL)
    s = prepared.sampling
    assert (s.temperature, s.top_p, s.top_k) == (0.3, 0.8, 5)
    assert s.seed == 99
    assert s.stop == ("END", "\n")


def test_default_sampling_is_copied(pre: Preprocessor) -> None:
    prepared = pre.prepare(chat(), POOL)
    s = prepared.sampling
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.stop) == (
        1.0,
        1.0,
        0,
        None,
        (),
    )


def test_identity_and_id_are_copied(pre: Preprocessor) -> None:
    prepared = pre.prepare(chat(), POOL)
    assert isinstance(prepared, PreparedRequest)
    assert prepared.request_id == "req-1"
    assert prepared.tenant == "acme"


def test_prompt_is_the_rendered_text(pre: Preprocessor, tokenizer: MuseTokenizer) -> None:
    prepared = pre.prepare(chat(TextPart("hello "), TextPart("world")), POOL)
    ids = prepared.prompt_token_ids
    assert ids[:2] == (tokenizer.bos_id, tokenizer.user_id)
    assert tokenizer.decode(ids) == "hello world"
