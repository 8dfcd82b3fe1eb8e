"""What a voice session needs of the gateway, as plain callables bound to one caller and pool
(`Gateway.open_voice` builds them), so tests can build a session over an engine directly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from museserve.config import MediaLimits
from museserve.config.voice import VoiceConfig
from museserve.domain import ChatRequest
from museserve.messages import MediaSegment
from museserve.preprocess.preprocessor import LivePrompt
from museserve.voice.turn import LivePool


@dataclass(frozen=True, slots=True)
class VoicePorts:
    config: VoiceConfig
    media: MediaLimits  # the preprocess tier's: the audio rows' shape
    pool: LivePool
    # The turn's prompt around its speech; earlier turns' speech segments, per turn.
    prepare_live: Callable[[ChatRequest, Sequence[Sequence[MediaSegment]]], LivePrompt]
    admit: Callable[[], AbstractContextManager[object]]  # the pool's admission slot, held per turn
    charge_request: Callable[[int], Awaitable[None]]  # a turn: one request and its prompt tokens
    charge_tokens: Callable[[int], Awaitable[None]]  # speech tokens as they arrive
    settle: Callable[[int], None]  # a turn's output tokens, once it ends
    observe_turn: Callable[[str, float], None]  # how a turn ended, and its seconds of speech
    request_timeout_s: float  # the answer's bound, after the speech
