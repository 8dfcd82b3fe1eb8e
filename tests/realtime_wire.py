"""Realtime server events checked against the official `openai` client's own types: each event
validates as its type's model, and every field it carries is one that model declares (the
models accept undeclared fields, so a misnamed field would otherwise pass unnoticed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai.types.beta.realtime as beta
import openai.types.realtime as ga
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from pydantic import BaseModel

from museserve.api.openai.realtime_events import Dialect

_SHARED = {
    "input_audio_buffer.speech_started": "InputAudioBufferSpeechStartedEvent",
    "input_audio_buffer.speech_stopped": "InputAudioBufferSpeechStoppedEvent",
    "input_audio_buffer.committed": "InputAudioBufferCommittedEvent",
    "input_audio_buffer.cleared": "InputAudioBufferClearedEvent",
    "session.created": "SessionCreatedEvent",
    "session.updated": "SessionUpdatedEvent",
    "response.created": "ResponseCreatedEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.done": "ResponseDoneEvent",
}
TYPES: dict[Dialect, dict[str, type[BaseModel]]] = {
    Dialect.GA: {
        **{kind: getattr(ga, name) for kind, name in _SHARED.items()},
        "error": ga.RealtimeErrorEvent,
        "response.output_text.delta": ga.ResponseTextDeltaEvent,
        "response.output_text.done": ga.ResponseTextDoneEvent,
    },
    Dialect.BETA: {
        **{kind: getattr(beta, name) for kind, name in _SHARED.items()},
        "error": beta.ErrorEvent,
        "response.text.delta": beta.ResponseTextDeltaEvent,
        "response.text.done": beta.ResponseTextDoneEvent,
    },
}


def official(event: dict[str, Any], dialect: Dialect = Dialect.GA) -> BaseModel:
    """`event` as the official client's model of its type; fails on any undeclared field."""
    model = TYPES[dialect][event["type"]].model_validate(event)
    if dialect is Dialect.GA and event["type"].startswith("session."):
        # GA declares the session a server sends (id, object) only on the create response.
        session = ga.RealtimeSessionCreateResponse.model_validate(event["session"])
        assert not list(undeclared(session, "session")), list(undeclared(session, "session"))
        assert set(event) == {"type", "event_id", "session"}
        return model
    assert not list(undeclared(model, "")), list(undeclared(model, ""))
    return model


def parsed_by_client(event: dict[str, Any]) -> Any:
    """`event` as `client.realtime.connect()`'s connection parses what it receives."""
    return AsyncRealtimeConnection.parse_event(None, json.dumps(event))  # type: ignore[arg-type]


def undeclared(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}.{key}"
        for name in type(value).model_fields:
            yield from undeclared(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from undeclared(item, f"{path}[{i}]")
