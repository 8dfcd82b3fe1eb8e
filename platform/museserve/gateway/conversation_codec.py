"""A stored answer as JSON: its conversation (domain messages, media as base64) and the answer.

The format is versioned (`v`); a record of another version reads as absent, so a rolling
upgrade that changes it loses old conversations, never misreads them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from museserve.domain import (
    AudioPart,
    ChatResult,
    ContentPart,
    FinishReason,
    ImagePart,
    Message,
    Role,
    TextPart,
    ToolCall,
    Usage,
)

VERSION = 1


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a follow-up continues and a retrieve returns."""

    response_id: str
    tenant: str
    created_at: float  # wall clock
    model: str
    messages: tuple[Message, ...]  # the conversation before the answer (instructions excluded)
    num_input_messages: int  # the last ones of `messages`: this turn's input (the earlier came before)
    instructions: str
    previous_response_id: str
    text: str
    reasoning: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    usage: Usage
    # The API edge's own copy of the request's settings (JSON), shown again when the answer is
    # read back (the Responses API's tools, text format, metadata, ...); opaque here.
    echo: Mapping[str, Any] = field(default_factory=dict)

    def input_messages(self) -> tuple[Message, ...]:
        """This turn's own input: the last `num_input_messages` of `messages`."""
        return self.messages[len(self.messages) - self.num_input_messages :]

    def conversation(self) -> tuple[Message, ...]:
        """The messages a follow-up continues: the conversation, then the answer."""
        answer = Message(Role.ASSISTANT, (TextPart(self.text),) if self.text else (), tool_calls=self.tool_calls)
        return (*self.messages, answer)

    @classmethod
    def of(cls, response_id: str, tenant: str, created_at: float, messages: tuple[Message, ...],
           num_input_messages: int, instructions: str, previous_response_id: str, result: ChatResult,
           echo: Mapping[str, Any] | None = None) -> StoredResponse:  # fmt: skip
        return cls(
            response_id, tenant, created_at, result.model, messages, num_input_messages, instructions,
            previous_response_id, result.text, result.reasoning, result.tool_calls, result.finish_reason, result.usage,
            dict(echo or {}),
        )  # fmt: skip


def encode(stored: StoredResponse) -> bytes:
    record = {
        "v": VERSION,
        "id": stored.response_id,
        "tenant": stored.tenant,
        "created_at": stored.created_at,
        "model": stored.model,
        "messages": [_message_json(m) for m in stored.messages],
        "num_input_messages": stored.num_input_messages,
        "instructions": stored.instructions,
        "previous_response_id": stored.previous_response_id,
        "text": stored.text,
        "reasoning": stored.reasoning,
        "tool_calls": [_call_json(c) for c in stored.tool_calls],
        "finish_reason": stored.finish_reason.value,
        "usage": [
            stored.usage.prompt_tokens,
            stored.usage.cached_tokens,
            stored.usage.reasoning_tokens,
            stored.usage.output_tokens,
        ],  # fmt: skip
        "echo": dict(stored.echo),
    }
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes) -> StoredResponse | None:
    record = json.loads(data)
    if record.get("v") != VERSION:
        return None
    return StoredResponse(
        record["id"],
        record["tenant"],
        record["created_at"],
        record["model"],
        tuple(_message(m) for m in record["messages"]),
        record["num_input_messages"],
        record["instructions"],
        record["previous_response_id"],
        record["text"],
        record["reasoning"],
        tuple(_call(c) for c in record["tool_calls"]),
        FinishReason(record["finish_reason"]),
        Usage(*record["usage"]),
        record.get("echo", {}),
    )


def _message_json(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role.value, "parts": [_part_json(p) for p in m.parts]}
    if m.name:
        out["name"] = m.name
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        out["tool_calls"] = [_call_json(c) for c in m.tool_calls]
    return out


def _message(d: dict[str, Any]) -> Message:
    return Message(
        Role(d["role"]),
        tuple(_part(p) for p in d["parts"]),
        d.get("name", ""),
        d.get("tool_call_id", ""),
        tuple(_call(c) for c in d.get("tool_calls", ())),
    )


def _part_json(p: ContentPart) -> dict[str, Any]:
    match p:
        case TextPart(text):
            return {"text": text}
        case ImagePart(data, url, mime_type):
            if data is None:
                return {"image_url": url}
            return {"image": base64.b64encode(data).decode(), "mime_type": mime_type}
        case AudioPart(data, audio_format):
            return {"audio": base64.b64encode(data).decode(), "format": audio_format}
    raise TypeError(f"not a content part: {type(p).__name__}")


def _part(d: dict[str, Any]) -> ContentPart:
    if "text" in d:
        return TextPart(d["text"])
    if "image_url" in d:
        return ImagePart(url=d["image_url"])
    if "image" in d:
        return ImagePart(data=base64.b64decode(d["image"]), mime_type=d.get("mime_type", ""))
    return AudioPart(base64.b64decode(d["audio"]), d["format"])


def _call_json(c: ToolCall) -> list[str]:
    return [c.id, c.name, c.arguments_json]


def _call(c: list[str]) -> ToolCall:
    return ToolCall(*c)


def stored_size(messages: tuple[Message, ...]) -> int:
    """About the bytes `messages` take stored: text as UTF-8, media as base64."""
    size = 0
    for m in messages:
        size += 64 + sum(len(c.arguments_json) + len(c.name) + 64 for c in m.tool_calls)
        for p in m.parts:
            if isinstance(p, TextPart):
                size += len(p.text.encode("utf-8", "replace")) + 16
            elif isinstance(p, ImagePart):
                size += (len(p.data) * 4 // 3 if p.data is not None else len(p.url or "")) + 64
            else:
                size += len(p.data) * 4 // 3 + 64
    return size
