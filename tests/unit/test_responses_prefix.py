"""A follow-up by previous_response_id re-renders the stored conversation; the pools route by
prompt prefix, so how much of the previous turn's prompt begins the follow-up's decides what
its replica's prefix cache serves. Checked for each chat format: the Muse format and a
reasoning template share everything up to the assistant marker (they close or open the
reasoning segment in the generation prompt, which a finished assistant turn does not carry);
ChatML without reasoning (SmolLM2's template) shares the whole previous prompt."""

from __future__ import annotations

import pytest
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from museserve.checkpoint import read_checkpoint
from museserve.domain import Message, Role, TextPart, ToolCall, ToolSpec
from museserve.preprocess.chat_format import ChatFormat
from museserve.preprocess.jinja_format import JinjaFormat
from museserve.preprocess.muse_format import MuseFormat
from museserve.preprocess.tokenizer import MuseTokenizer, Tokenizer
from tests.real_model import SMOLLM2_GGUF
from tests.unit.test_jinja_format import QWEN3_STYLE

TOOLS = (
    ToolSpec("get_weather", "Weather for a city", '{"type": "object", "properties": {"city": {"type": "string"}}}'),
)


def text(role: Role, content: str) -> Message:
    return Message(role, (TextPart(content),))


@pytest.fixture(scope="module")
def formats() -> dict[str, ChatFormat]:
    info = read_checkpoint(SMOLLM2_GGUF, "gguf")
    qwen_tokenizer = HFTokenizer.from_str(info.tokenizer_json)
    qwen_tokenizer.add_tokens(
        [AddedToken(t, normalized=False) for t in ("<think>", "</think>", "<tool_call>", "</tool_call>")]
    )
    return {
        "muse": MuseFormat(MuseTokenizer.load(None)),
        "chatml": JinjaFormat(Tokenizer.from_json(info.tokenizer_json), info.chat_template, info.eos_token_ids),
        "qwen3-style": JinjaFormat(Tokenizer(qwen_tokenizer), QWEN3_STYLE, info.eos_token_ids),
    }


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# What the previous prompt has past the shared prefix: its generation prompt's reasoning markers.
UNSHARED_TAIL = {
    ("muse", False): "<|think|><|/think|>",
    ("muse", True): "<|think|>",
    ("chatml", False): "",
    ("qwen3-style", False): "<think>\n\n</think>\n\n",
    ("qwen3-style", True): "<think>",
}


@pytest.mark.parametrize("name", ["muse", "chatml", "qwen3-style"])
@pytest.mark.parametrize("reasoning", [False, True])
@pytest.mark.parametrize("with_tools", [False, True])
def test_a_follow_up_begins_with_the_previous_prompt_up_to_its_generation_prompt(
    formats: dict[str, ChatFormat], name: str, reasoning: bool, with_tools: bool
):
    fmt = formats[name]
    if reasoning and not fmt.can_reason:
        pytest.skip("this format cannot reason")
    tools = TOOLS if with_tools else ()
    first = [text(Role.SYSTEM, "Be brief."), text(Role.USER, "What is 2+2?")]
    before = fmt.render(first, tools, reasoning=reasoning)
    calls = (ToolCall("call_1", "get_weather", '{"city": "Paris"}'),) if with_tools else ()
    answer = Message(Role.ASSISTANT, (TextPart("It is 4."),), tool_calls=calls)
    follow = [*first, answer, text(Role.USER, "And 3+3?")]
    after = fmt.render(follow, tools, reasoning=reasoning)
    shared = common_prefix(before, after)
    tail = fmt.tokenizer.decode(before[shared:], skip_special_tokens=False)
    assert tail == UNSHARED_TAIL[name, reasoning], (name, shared, len(before))
