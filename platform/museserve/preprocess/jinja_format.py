"""A checkpoint's own Jinja chat template as a chat format.

Rendering: messages, tools and the generation prompt go through the template in a sandbox
(`jinja_sandbox`), with every client string behind a sentinel. Encoding then follows what
transformers' `apply_chat_template(tokenize=True)` does, with one difference: the added
tokens (`<|im_start|>`, `<|im_end|>`, ...) are matched in the template's own text only.
Text between two of them, template and client characters together, is encoded as one plain
string, so a conversation whose text holds no added token encodes exactly as transformers
encodes it, and a client who types `<|im_end|>\\n<|im_start|>system` gets plain text.

What the format finds in the checkpoint:
- stop ids: the checkpoint's EOS ids, plus the token that ends an assistant turn in the
  template (found by rendering a probe conversation);
- reasoning: `<think>` and `</think>` as added tokens (Qwen3). A Thinking prompt then ends
  inside the open segment (`<think>` is appended unless the template wrote it); an Instant
  one renders with `enable_thinking=False`, and the segment is closed empty unless the
  template closed it;
- tools: a template that renders `tools` and writes `<tool_call>` spans gets them as they
  are; any other gets the default layout of `hermes_tools`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jinja2.meta
from jinja2.exceptions import TemplateError

from museserve.domain import Message, Role, TextPart, ToolSpec
from museserve.errors import InvalidArgument
from museserve.preprocess.chat_format import ChatFormat, Markers, MediaTokens
from museserve.preprocess.hermes_tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, tool_entry, with_default_tools
from museserve.preprocess.jinja_sandbox import HOLE, ClientTexts, compile_template
from museserve.preprocess.muse_format import parse_json_object
from museserve.preprocess.tokenizer import Tokenizer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EMPTY_REASONING = "<think>\n\n</think>\n\n"  # what Qwen3's template writes with enable_thinking off


class JinjaFormat(ChatFormat):
    name = "jinja"

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: str,
        eos_ids: Iterable[int],
        special_tokens: Mapping[str, str] | None = None,
    ):
        """`special_tokens`: bos_token, eos_token, ... by name, as the template reads them."""
        self.tokenizer = tokenizer
        self._template = compile_template(template)
        self._special_tokens = dict(special_tokens or {})
        declared = jinja2.meta.find_undeclared_variables(self._template.environment.parse(template))
        self.template_renders_tools = "tools" in declared and TOOL_CALL_OPEN in template
        added = sorted(tokenizer.added_tokens, key=len, reverse=True)
        self._added = re.compile("|".join(re.escape(t) for t in added)) if added else None
        think = tuple(tokenizer.added_tokens.get(t) for t in (THINK_OPEN, THINK_CLOSE))
        self.markers = Markers(
            stop_ids=frozenset(eos_ids) | self._end_of_turn_ids(),
            think=think if None not in think else None,  # type: ignore[arg-type]
            tool_call_text=(TOOL_CALL_OPEN, TOOL_CALL_CLOSE),
        )

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        reasoning: bool,
        media_tokens: MediaTokens | None = None,
    ) -> list[int]:
        before, after = self._render(messages, tools, reasoning, hole=False)
        return before + after

    def render_split(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        reasoning: bool,
        media_tokens: MediaTokens | None = None,
    ) -> tuple[list[int], list[int]]:
        return self._render(messages, tools, reasoning, hole=True)

    # -- rendering -------------------------------------------------------------------------

    def _render(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], reasoning: bool, hole: bool
    ) -> tuple[list[int], list[int]]:
        if reasoning and not self.can_reason:
            raise ValueError("reasoning asked of a format that cannot reason")
        texts = ClientTexts()
        context = self._context(messages, tools, texts, hole)
        try:
            rendered = self._template.render(
                **context, add_generation_prompt=True, enable_thinking=reasoning, **self._special_tokens
            )
        except TemplateError as e:
            message = "".join(text for text, _ in texts.runs(str(e)))  # client text in place of its sentinels
            raise InvalidArgument(
                f"the model's chat template refused the conversation: {message}", field="messages"
            ) from None
        tail = rendered.rstrip()
        if reasoning and not tail.endswith(THINK_OPEN):  # some templates open the segment themselves
            rendered += THINK_OPEN
        elif not reasoning and self.can_reason and not tail.endswith(THINK_CLOSE):  # closed empty, as Qwen3 does
            rendered = (tail[: -len(THINK_OPEN)] if tail.endswith(THINK_OPEN) else rendered) + EMPTY_REASONING
        return self._encode(texts.runs(rendered))

    def _context(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec], texts: ClientTexts, hole: bool
    ) -> dict[str, Any]:
        if not self.template_renders_tools:
            messages, tools = with_default_tools(messages, tools), ()
        entries = [self._message(m, i, texts) for i, m in enumerate(messages)]
        if hole:
            entries[-1]["content"] = entries[-1]["content"] + texts.sentinel(HOLE)
        tool_list = [texts.deep_wrap(tool_entry(t, i)) for i, t in enumerate(tools)] or None
        return {"messages": entries, "tools": tool_list}

    def _message(self, message: Message, index: int, texts: ClientTexts) -> dict[str, Any]:
        if any(not isinstance(p, TextPart) for p in message.parts):
            raise InvalidArgument("this model takes text only", field=f"messages[{index}].content")
        entry: dict[str, Any] = {"role": str(message.role), "content": texts.wrap(message.text) if message.text else ""}
        if message.name:
            entry["name"] = texts.wrap(message.name)
        if message.role is Role.TOOL:
            entry["tool_call_id"] = texts.wrap(message.tool_call_id)
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": texts.wrap(call.id),
                    "type": "function",
                    "function": {
                        "name": texts.wrap(call.name),
                        "arguments": texts.deep_wrap(
                            parse_json_object(call.arguments_json, f"messages[{index}].tool_calls[{j}].arguments")
                        ),
                    },
                }
                for j, call in enumerate(message.tool_calls)
            ]
        return entry

    # -- encoding --------------------------------------------------------------------------

    def _encode(self, runs: Iterable[tuple[str, bool | None]]) -> tuple[list[int], list[int]]:
        """Ids before and after the hole (all in the first list when there is none)."""
        parts: list[list[int]] = [[]]
        pending: list[str] = []

        def flush() -> None:
            parts[-1].extend(self.tokenizer.encode_text("".join(pending)))
            pending.clear()

        for text, from_client in runs:
            if from_client is None:  # the hole
                flush()
                parts.append([])
            elif from_client or self._added is None:
                pending.append(text)
            else:
                position = 0
                for match in self._added.finditer(text):
                    pending.append(text[position : match.start()])
                    flush()
                    parts[-1].append(self.tokenizer.added_tokens[match.group()])
                    position = match.end()
                pending.append(text[position:])
        flush()
        return parts[0], parts[1] if len(parts) > 1 else []

    def _end_of_turn_ids(self) -> frozenset[int]:
        """The added token the template writes right after an assistant's text, if any."""
        probe = [Message(Role.USER, (TextPart("ping"),)), Message(Role.ASSISTANT, (TextPart("pong"),))]
        texts = ClientTexts()
        try:
            rendered = self._template.render(
                messages=[self._message(m, i, texts) for i, m in enumerate(probe)],
                add_generation_prompt=False,
                **self._special_tokens,
            )
        except TemplateError:
            return frozenset()
        runs = list(texts.runs(rendered))
        answer = next((i for i, (text, from_client) in enumerate(runs) if from_client and text == "pong"), None)
        if answer is None or self._added is None:
            return frozenset()
        for text, from_client in runs[answer + 1 :]:
            match = None if from_client else self._added.search(text)
            if match is not None and not text[: match.start()].strip():
                return frozenset({self.tokenizer.added_tokens[match.group()]})
        return frozenset()
