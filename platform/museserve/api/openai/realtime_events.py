"""The server events of the Realtime WebSocket, as JSON-ready dicts in the official client's
shapes (`openai.types.realtime`, or `openai.types.beta.realtime` in the beta dialect).

An answer is one response with one assistant message item holding one text part:
`response.created`, `response.output_item.added`, `response.content_part.added`, the text
deltas, then `response.output_text.done` (beta: `response.text.done`),
`response.content_part.done`, `response.output_item.done` and `response.done` with the
status and usage. Errors are `error` events: `error.param` is the client's field,
`error.event_id` the client event that failed.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Any

from museserve.api.openai.errors import STATUSES
from museserve.domain import FinishReason, Usage
from museserve.errors import ErrorCode, MuseError

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_LATER = 1000, 1001, 1008, 1011, 1013


class Dialect(enum.StrEnum):
    GA = "ga"
    BETA = "beta"  # `OpenAI-Beta: realtime=v1`: `response.text.*`, `modalities`, flat audio settings


class Refusal(MuseError):
    """A client event the edge refuses itself: `field` is already the client's param path and
    `wire_code` OpenAI's error code for it."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str, *, param: str = "", code: str = "invalid_value", event_id: str | None = None):
        super().__init__(message, field=param)
        self.wire_code = code
        self.event_id = event_id


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def close_code(error: MuseError) -> int:
    """The WebSocket close code of a session that ended with `error`."""
    if error.code in (ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.UNAVAILABLE):
        return CLOSE_TRY_LATER
    if error.code is ErrorCode.INTERNAL:
        return CLOSE_INTERNAL
    if error.code is ErrorCode.CANCELLED:
        return CLOSE_NORMAL
    return CLOSE_POLICY


@dataclass
class AnswerRecord:
    """The response a turn's answer streams into; its text grows with each delta."""

    max_output_tokens: int | None
    response_id: str = field(default_factory=lambda: new_id("resp"))
    item_id: str = field(default_factory=lambda: new_id("item"))
    text: list[str] = field(default_factory=list)
    usage: Usage | None = None


def finish_status(reason: FinishReason, client_cancelled: bool) -> tuple[str, str | None]:
    """`response.done`'s status and `status_details.reason` for an answer that ended so."""
    if reason is FinishReason.LENGTH:
        return "incomplete", "max_output_tokens"
    if reason is FinishReason.CANCELLED:
        return "cancelled", "client_cancelled" if client_cancelled else "turn_detected"
    return "completed", None


class ServerEvents:
    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self._text_event = "response.text" if dialect is Dialect.BETA else "response.output_text"
        self._content_type = "text" if dialect is Dialect.BETA else "output_text"
        self._modalities = "modalities" if dialect is Dialect.BETA else "output_modalities"

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": new_id("event"), **fields}

    def error(self, error: MuseError, param: str | None, client_event_id: str | None) -> dict[str, Any]:
        if isinstance(error, Refusal):
            kind, code = "invalid_request_error", error.wire_code
            client_event_id = client_event_id or error.event_id
        else:
            kind, code = STATUSES.get(error.code, (500, "server_error"))[1], error.code.value
        message = f"{param}: {error.message}" if param else error.message
        body = {"type": kind, "code": code, "message": message, "param": param, "event_id": client_event_id}
        return self.event("error", error=body)

    def session(self, kind: str, session: dict[str, Any]) -> dict[str, Any]:
        """`session.created` or `session.updated`."""
        return self.event(f"session.{kind}", session=session)

    def speech_started(self, item_id: str, audio_start_ms: int) -> dict[str, Any]:
        return self.event("input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id)

    def speech_stopped(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return self.event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)

    def committed(self, item_id: str, previous_item_id: str | None) -> dict[str, Any]:
        return self.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id)

    def cleared(self) -> dict[str, Any]:
        return self.event("input_audio_buffer.cleared")

    def answer_started(self, answer: AnswerRecord) -> list[dict[str, Any]]:
        where = {"response_id": answer.response_id, "output_index": 0}
        return [
            self.event("response.created", response=self._response(answer, "in_progress", None, None)),
            self.event("response.output_item.added", **where, item=self._item(answer, "in_progress", None)),
            self.event(
                "response.content_part.added",
                **where,
                item_id=answer.item_id,
                content_index=0,
                part={"type": "text", "text": ""},
            ),
        ]

    def text_delta(self, answer: AnswerRecord, delta: str) -> dict[str, Any]:
        return self.event(f"{self._text_event}.delta", **self._part_of(answer), delta=delta)

    def answer_finished(
        self, answer: AnswerRecord, status: str, reason: str | None, error: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The closing events; `status`: completed, incomplete, cancelled or failed (`error`
        then says why: type, code, message)."""
        text = "".join(answer.text)
        item = self._item(answer, "completed" if status == "completed" else "incomplete", text)
        details = None if status == "completed" else {"type": status, "reason": reason, "error": error}
        return [
            self.event(f"{self._text_event}.done", **self._part_of(answer), text=text),
            self.event("response.content_part.done", **self._part_of(answer), part={"type": "text", "text": text}),
            self.event("response.output_item.done", response_id=answer.response_id, output_index=0, item=item),
            self.event("response.done", response=self._response(answer, status, details, item)),
        ]

    def _part_of(self, answer: AnswerRecord) -> dict[str, Any]:
        return {"response_id": answer.response_id, "item_id": answer.item_id, "output_index": 0, "content_index": 0}

    def _item(self, answer: AnswerRecord, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [{"type": self._content_type, "text": text}]
        return {
            "id": answer.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": status, "content": content,
        }  # fmt: skip

    def _response(
        self, answer: AnswerRecord, status: str, details: dict[str, Any] | None, item: dict[str, Any] | None
    ) -> dict[str, Any]:
        """`item`: the finished answer's message (None while it streams: no output, no usage yet)."""
        return {
            "id": answer.response_id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [] if item is None else [item],
            self._modalities: ["text"],
            "max_output_tokens": answer.max_output_tokens or "inf",
            "usage": usage_json(answer.usage) if answer.usage is not None and item is not None else None,
        }


def usage_json(usage: Usage) -> dict[str, Any]:
    """Reasoning counts as output, as OpenAI counts it."""
    output = usage.output_tokens + usage.reasoning_tokens
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": output,
        "total_tokens": usage.total_tokens,
        "input_token_details": {"cached_tokens": usage.cached_tokens},
        "output_token_details": {"text_tokens": output, "audio_tokens": 0},
    }
