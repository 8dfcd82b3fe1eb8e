"""The OpenAI API's model strings: `MODEL`, `MODEL:MODE` and `MODEL:ADAPTER`.

The first ':' splits the served model from a suffix (pool names hold no ':'). A suffix that
names a mode (instant, thinking, contemplating) is the mode; any other is a LoRA adapter of
that model, which the gateway resolves and checks (an adapter named like a mode is reached over
gRPC's `adapter` only). An empty MODEL leaves the pool to the gateway's routes, as a missing one
does. A response names the model a request with an adapter asked for as it was sent, so a
client reads back its own `MODEL:ADAPTER`; `x-served-by` names the pool that served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from museserve.domain import ChatRequest, ChatResult, Finish, Mode, StreamEvent
from museserve.errors import InvalidArgument

_MODES = frozenset(Mode.__members__.values())


@dataclass(frozen=True, slots=True)
class ModelName:
    base: str  # "": the gateway routes by mode
    mode: Mode | None = None
    adapter: str = ""


def parse_model_name(name: str) -> ModelName:
    base, colon, suffix = name.partition(":")
    if colon and not suffix:
        raise InvalidArgument("a mode (instant, thinking, contemplating) or an adapter must follow ':'", field="model")
    if not suffix:
        return ModelName(base)
    if suffix in _MODES:
        return ModelName(base, mode=Mode(suffix))
    return ModelName(base, adapter=suffix)


def adapter_model_id(base: str, adapter: str) -> str:
    """The id `/v1/models` lists for an adapter of `base`, and what a request names it by."""
    return f"{base}:{adapter}"


def answered_model(chat: ChatRequest, asked: str, served: str) -> str:
    """The `model` of the response to `chat`: as `asked` when it named an adapter, else the pool
    that `served` (today's answer for a bare model or one with a mode)."""
    return asked if chat.adapter else served


def with_answered_model(result: ChatResult, chat: ChatRequest, asked: str) -> ChatResult:
    return replace(result, model=answered_model(chat, asked, result.model))


def events_with_answered_model(
    events: AsyncIterator[StreamEvent], chat: ChatRequest, asked: str
) -> AsyncIterator[StreamEvent]:
    """`events` with the Finish naming the model as `answered_model` does."""
    return _renamed(events, asked) if chat.adapter else events


async def _renamed(events: AsyncIterator[StreamEvent], model: str) -> AsyncIterator[StreamEvent]:
    try:
        async for event in events:
            yield replace(event, model=model) if isinstance(event, Finish) else event
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # closing this closes the gateway's stream
