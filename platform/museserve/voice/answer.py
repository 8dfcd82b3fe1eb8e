"""A turn's answer, from the replica's chunks to the session's events.

The chunks become the gateway's stream events (deltas, one Usage, one Finish) as for a
ChatStream request. An answer cut off (new speech, a cancel, the session closing) still ends
its stream properly: a Usage counting only the tokens that streamed, and Finish CANCELLED.
What it leaves behind: the text the user got (the next turn's history), the tokens to
settle, and how it ended (`GatewayObserver.voice_turn`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from museserve.domain import Finish, FinishReason, Usage
from museserve.errors import Internal
from museserve.gateway.capture import StreamCapture
from museserve.gateway.events import StreamEvents
from museserve.voice.events import AnswerEvent, VoiceEvent
from museserve.voice.turn import LiveTurn


class TurnAnswer:
    def __init__(self, turn: LiveTurn, emit: Callable[[VoiceEvent], None]):
        self.turn = turn
        self._emit = emit
        self._pool = turn.prompt.prepared.pool
        self._capture = StreamCapture(self._pool, keep_text=True)
        self.end = "failed"  # answered, interrupted or failed, once `run` returns or raises

    @property
    def text(self) -> str:
        return "".join(self._capture.text)

    @property
    def output_tokens(self) -> int:
        return self._capture.output_tokens

    async def run(self) -> None:
        """Streams the answer; raises a MuseError when it fails, CancelledError when it is cut."""
        turn, capture = self.turn, self._capture
        events = StreamEvents(turn.prompt.prepared, self._pool, "", usage_in_stream=False)
        try:
            async for chunk in turn.answer():
                capture.observe(chunk)
                for event in events.of(chunk):
                    self._emit(AnswerEvent(turn.index, event))
        except asyncio.CancelledError:
            self.end = "interrupted"
            usage = Usage(prompt_tokens=turn.num_prompt_tokens, output_tokens=capture.generated_tokens)
            self._emit(AnswerEvent(turn.index, usage))
            self._emit(AnswerEvent(turn.index, Finish(FinishReason.CANCELLED, self._pool)))
            raise
        if not capture.finish:
            raise Internal(f"model {self._pool} ended the answer's stream early")
        self.end = "answered"
