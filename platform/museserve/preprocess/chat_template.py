"""The chat template: messages and tools to prompt token ids.

Layout, with control tokens written by name and `text(...)` meaning `encode_text`:

    <|bos|>
    <|tools|> text(JSON list of {name, description, parameters}) <|end|>      if tools
    <|system|> text(content) <|end|>                                          per message
    <|user|> text + media <|end|>      a media part: <|image|> or <|audio|> x its num_tokens
    <|assistant|> text(content) (<|tool_call|> text({"name", "arguments"}) <|/tool_call|>)* <|end|>
    <|tool|> text({"tool_call_id": ...} + "\\n" + content) <|end|>
    <|assistant|> <|think|>                                 reasoning opened
    <|assistant|> <|think|> <|/think|>                      reasoning skipped (empty segment)

Control tokens are inserted by id and every piece of client text goes through `encode_text`,
so no client string can produce a control token.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from museserve.domain import AudioPart, ImagePart, Message, Mode, Role, TextPart, ToolCall, ToolSpec
from museserve.errors import InvalidArgument
from museserve.preprocess import special_tokens as st
from museserve.preprocess.tokenizer import MuseTokenizer

MediaPart = ImagePart | AudioPart
# Maps one image or audio part to the ids that stand for it in the prompt.
MediaTokens = Callable[[MediaPart, MuseTokenizer], list[int]]

ROLE_TOKENS: dict[Role, str] = {
    Role.SYSTEM: st.SYSTEM,
    Role.USER: st.USER,
    Role.ASSISTANT: st.ASSISTANT,
    Role.TOOL: st.TOOL,
}


def single_placeholder(part: MediaPart, tokenizer: MuseTokenizer) -> list[int]:
    """One `<|image|>` or `<|audio|>` per part, for rendering without decoded media; the
    preprocessor passes `media.placeholders` instead (one placeholder per feature row)."""
    return [tokenizer.image_id if isinstance(part, ImagePart) else tokenizer.audio_id]


def opens_reasoning(mode: Mode, thinking_enabled: bool) -> bool:
    """Whether the generation prompt leaves the reasoning segment open for the model to fill."""
    return thinking_enabled and mode != Mode.INSTANT


def render_prompt(
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    *,
    mode: Mode,
    thinking_enabled: bool,
    tokenizer: MuseTokenizer,
    media_tokens: MediaTokens = single_placeholder,
) -> list[int]:
    """The prompt ids for a conversation, ending with the assistant's generation prompt.

    `thinking_enabled` is whether the serving model may reason at all; when it is False, or
    the mode is INSTANT, the prompt carries an empty reasoning segment.
    """
    ids = [tokenizer.bos_id]
    if tools:
        ids.append(tokenizer.tools_id)
        ids += tokenizer.encode_text(tools_json(tools))
        ids.append(tokenizer.end_id)
    for index, message in enumerate(messages):
        ids += render_message(message, index, tokenizer, media_tokens)
    ids += [tokenizer.assistant_id, tokenizer.think_id]
    if not opens_reasoning(mode, thinking_enabled):
        ids.append(tokenizer.think_end_id)
    return ids


def render_message(message: Message, index: int, tokenizer: MuseTokenizer, media_tokens: MediaTokens) -> list[int]:
    ids = [tokenizer.token_id(ROLE_TOKENS[message.role])]
    if message.role == Role.TOOL:
        header = json.dumps({"tool_call_id": message.tool_call_id}, ensure_ascii=False)
        ids += tokenizer.encode_text(header + "\n")
    ids += render_parts(message.parts, tokenizer, media_tokens)
    for call_index, call in enumerate(message.tool_calls):
        field = f"messages[{index}].tool_calls[{call_index}].arguments"
        ids.append(tokenizer.tool_call_id)
        ids += tokenizer.encode_text(tool_call_json(call, field))
        ids.append(tokenizer.tool_call_end_id)
    ids.append(tokenizer.end_id)
    return ids


def render_parts(
    parts: Sequence[TextPart | MediaPart], tokenizer: MuseTokenizer, media_tokens: MediaTokens
) -> list[int]:
    # Adjacent text parts are encoded as one string so a split inside a word tokenizes as usual.
    ids: list[int] = []
    pending_text: list[str] = []
    for part in parts:
        if isinstance(part, TextPart):
            pending_text.append(part.text)
            continue
        ids += tokenizer.encode_text("".join(pending_text))
        pending_text.clear()
        ids += media_tokens(part, tokenizer)
    ids += tokenizer.encode_text("".join(pending_text))
    return ids


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
