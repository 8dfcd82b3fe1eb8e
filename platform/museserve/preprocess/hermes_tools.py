"""The default way to offer tools to a checkpoint whose chat template renders none.

Hermes-style, as Qwen2.5 and NousResearch's Hermes models use it:

- the tools go in a system message: each as `{"type": "function", "function": {...}}` on a
  line of its own between `<tools>` and `</tools>`, with the instruction to answer a call as
  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
- an assistant turn that called tools carries those spans after its text;
- a tool result becomes a user turn holding `<tool_response>\\n...\\n</tool_response>`
  (results in a row share one turn).

Templates that render `tools` themselves and write `<tool_call>` spans (Qwen2, Qwen3) are
given the tools instead; either way the model answers with the same spans, which the engine
parses back into calls (and constrains with a grammar when a call is required).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from museserve.domain import Message, Role, TextPart, ToolCall, ToolSpec
from museserve.preprocess.muse_format import parse_json_object

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

INTRO = (
    "You are a function calling AI model. You may call one or more of the tools below to help with the "
    "user's request. The tools are JSON schemas within <tools></tools> tags:\n<tools>\n"
)
HOW_TO_CALL = (
    "\n</tools>\n\nFor each call, return a JSON object with the tool's name and arguments within "
    '<tool_call></tool_call> tags:\n<tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n</tool_call>'
)


def tool_entry(tool: ToolSpec, index: int) -> dict[str, object]:
    """A tool as chat templates take it (the OpenAI function layout)."""
    parameters = parse_json_object(tool.parameters_json_schema, f"tools[{index}].parameters_json_schema")
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    }


def tools_prompt(tools: Sequence[ToolSpec]) -> str:
    lines = "\n".join(json.dumps(tool_entry(t, i), ensure_ascii=False) for i, t in enumerate(tools))
    return INTRO + lines + HOW_TO_CALL


def call_span(call: ToolCall, field: str) -> str:
    arguments = parse_json_object(call.arguments_json, field)
    body = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def with_default_tools(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[Message]:
    """The conversation as plain system/user/assistant text turns carrying the tools, calls and
    results in the Hermes layout (for templates that know nothing of tools)."""
    out: list[Message] = []
    for index, message in enumerate(messages):
        if message.role is Role.TOOL:
            response = f"<tool_response>\n{message.text}\n</tool_response>"
            if out and out[-1].role is Role.USER and index and messages[index - 1].role is Role.TOOL:
                response = out.pop().text + "\n" + response
            out.append(Message(Role.USER, (TextPart(response),)))
        elif message.role is Role.ASSISTANT and message.tool_calls:
            spans = [
                call_span(c, f"messages[{index}].tool_calls[{i}].arguments") for i, c in enumerate(message.tool_calls)
            ]
            text = "\n".join([message.text, *spans] if message.text else spans)
            out.append(Message(Role.ASSISTANT, (TextPart(text),), message.name))
        else:
            out.append(message)
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0].role is Role.SYSTEM:
            out[0] = Message(Role.SYSTEM, (TextPart(out[0].text + "\n\n" + prompt),), out[0].name)
        else:
            out.insert(0, Message(Role.SYSTEM, (TextPart(prompt),)))
    return out
