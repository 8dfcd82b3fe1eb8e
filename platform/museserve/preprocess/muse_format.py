"""The Muse chat format: messages and tools to prompt ids, control tokens inserted by id.

Layout, with control tokens written by name and `text(...)` meaning `encode_text`:

    <|bos|>
    <|tools|> text(JSON list of {name, description, parameters}) <|end|>      if tools
    <|system|> text(content) <|end|>                                          per message
    <|user|> text + media <|end|>      a media part: <|image|> or <|audio|> x its num_tokens
    <|assistant|> text(content) (<|tool_call|> text({"name", "arguments"}) <|/tool_call|>)* <|end|>
    <|tool|> text({"tool_call_id": ...} + "\\n" + content) <|end|>
    <|assistant|> <|think|>                                 reasoning opened
    <|assistant|> <|think|> <|/think|>                      reasoning skipped (empty segment)

Every piece of client text goes through `encode_text`, so no client string can produce a
control token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from museserve.domain import Message, Role, TextPart, ToolCall, ToolSpec
from museserve.errors import InvalidArgument
from museserve.preprocess import special_tokens as st
from museserve.preprocess.chat_format import ChatFormat, Markers, MediaPart, MediaTokens
from museserve.preprocess.tokenizer import MuseTokenizer

ROLE_TOKENS: dict[Role, str] = {
    Role.SYSTEM: st.SYSTEM,
    Role.USER: st.USER,
    Role.ASSISTANT: st.ASSISTANT,
    Role.TOOL: st.TOOL,
}


class MuseFormat(ChatFormat):
    name = "muse"

    def __init__(self, tokenizer: MuseTokenizer):
        self.tokenizer = tokenizer
        t = tokenizer
        self.markers = Markers(
            stop_ids=frozenset((t.eos_id, t.end_id)),
            think=(t.think_id, t.think_end_id),
            tool_call_ids=(t.tool_call_id, t.tool_call_end_id),
            media_ids={"image": t.image_id, "audio": t.audio_id},
        )

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        reasoning: bool,
        media_tokens: MediaTokens | None = None,
    ) -> list[int]:
        media_tokens = media_tokens or self.single_placeholder
        ids = self._head(tools)
        for index, message in enumerate(messages):
            ids += self._message(message, index, media_tokens)
        return ids + self._generation_prompt(reasoning)

    def render_split(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        reasoning: bool,
        media_tokens: MediaTokens | None = None,
    ) -> tuple[list[int], list[int]]:
        media_tokens = media_tokens or self.single_placeholder
        before = self._head(tools)
        for index, message in enumerate(messages):
            before += self._message(message, index, media_tokens)
        before.pop()  # the last message's <|end|>
        return before, [self.tokenizer.end_id, *self._generation_prompt(reasoning)]

    def _head(self, tools: Sequence[ToolSpec]) -> list[int]:
        t = self.tokenizer
        ids = [t.bos_id]
        if tools:
            ids += [t.tools_id, *t.encode_text(tools_json(tools)), t.end_id]
        return ids

    def _generation_prompt(self, reasoning: bool) -> list[int]:
        t = self.tokenizer
        return [t.assistant_id, t.think_id] if reasoning else [t.assistant_id, t.think_id, t.think_end_id]

    def _message(self, message: Message, index: int, media_tokens: MediaTokens) -> list[int]:
        t = self.tokenizer
        ids = [t.token_id(ROLE_TOKENS[message.role])]
        if message.role == Role.TOOL:
            header = json.dumps({"tool_call_id": message.tool_call_id}, ensure_ascii=False)
            ids += t.encode_text(header + "\n")
        ids += self._parts(message.parts, media_tokens)
        for call_index, call in enumerate(message.tool_calls):
            field = f"messages[{index}].tool_calls[{call_index}].arguments"
            ids += [t.tool_call_id, *t.encode_text(tool_call_json(call, field)), t.tool_call_end_id]
        ids.append(t.end_id)
        return ids

    def _parts(self, parts: Sequence[TextPart | MediaPart], media_tokens: MediaTokens) -> list[int]:
        # Adjacent text parts are encoded as one string so a split inside a word tokenizes as usual.
        ids: list[int] = []
        pending_text: list[str] = []
        for part in parts:
            if isinstance(part, TextPart):
                pending_text.append(part.text)
                continue
            ids += self.tokenizer.encode_text("".join(pending_text))
            pending_text.clear()
            ids += media_tokens(part)
        return ids + self.tokenizer.encode_text("".join(pending_text))


def tools_json(tools: Sequence[ToolSpec]) -> str:
    entries = [
        {
            "name": tool.name,
            "description": tool.description,
            "parameters": parse_json_object(tool.parameters_json_schema, f"tools[{i}].parameters"),
        }
        for i, tool in enumerate(tools)
    ]
    return json.dumps(entries, ensure_ascii=False)


def tool_call_json(call: ToolCall, field: str) -> str:
    arguments = parse_json_object(call.arguments_json, field)
    return json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)


def parse_json_object(text: str, field: str) -> dict[str, object]:
    """An empty string means an empty object."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"not valid JSON: {exc.msg}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidArgument("must be a JSON object", field=field)
    return value
