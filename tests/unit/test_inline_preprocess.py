"""Text-only requests are prepared in the gateway; anything with media goes to the tier."""

from __future__ import annotations

from museserve.config import parse_config
from museserve.domain import ChatRequest, ImagePart, Message, Role, TextPart
from museserve.gateway.inline_preprocess import THREAD_ABOVE_CHARS, InlineTextPreprocess, text_only
from museserve.messages import PreparedRequest, PromptCount
from museserve.preprocess.pool_model import PoolModel
from museserve.preprocess.preprocessor import Preprocessor
from museserve.preprocess.tokenizer import MuseTokenizer

CONFIG = parse_config({"pools": [{"name": "muse-tiny", "engine": {"context_length": 100_000}}]})


class Remote:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest:
        self.calls.append("prepare")
        raise RuntimeError("the remote tier is not used in this test")

    async def count(self, request: ChatRequest, pool: str) -> PromptCount:
        self.calls.append("count")
        return PromptCount(prompt_tokens=1, context_length=1, pool=pool)


def request(*parts) -> ChatRequest:
    return ChatRequest("r1", (Message(Role.USER, tuple(parts)),))


async def test_text_is_prepared_in_process_exactly_as_the_tier_would() -> None:
    remote = Remote()
    inline = InlineTextPreprocess(CONFIG, remote)
    reference = Preprocessor(
        PoolModel.muse(MuseTokenizer.load(None)), CONFIG.preprocess.media, CONFIG.server.request_timeout_s
    )
    for text in ("hello there", "x " * THREAD_ABOVE_CHARS):  # short: on the loop; long: in a thread
        prepared = await inline.prepare(request(TextPart(text)), "muse-tiny")
        expected = reference.prepare(request(TextPart(text)), CONFIG.pools[0])
        assert prepared.prompt_token_ids == expected.prompt_token_ids
        count = await inline.count(request(TextPart(text)), "muse-tiny")
        assert count.prompt_tokens == len(expected.prompt_token_ids)
    assert remote.calls == []


async def test_media_goes_to_the_preprocess_tier() -> None:
    remote = Remote()
    inline = InlineTextPreprocess(CONFIG, remote)
    with_image = request(TextPart("look"), ImagePart(data=b"\x89PNG", mime_type="image/png"))
    assert not text_only(with_image) and text_only(request(TextPart("a")))
    assert (await inline.count(with_image, "muse-tiny")).prompt_tokens == 1
    assert remote.calls == ["count"]
