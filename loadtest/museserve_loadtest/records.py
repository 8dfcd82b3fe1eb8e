"""What one request measured, and the transport interface that fills it in.

Times are seconds on the run's monotonic clock (0 = the run's start). Every latency is
taken from `scheduled`, the send time fixed before the run, never from when the client
got round to sending: time spent waiting behind the concurrency cap or a late event loop
counts against the server's latency, as a user would see it (no coordinated omission).
A voice turn is `scheduled` at its end of speech (voice_session.py): its TTFT is the time from
the end of speech to the first answer token.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .plan import RequestSpec

OK_STATUSES = frozenset({"OK", "200"})  # gRPC code name, HTTP status
CANCELLED = "CLIENT_CANCELLED"  # stopped by the hard stop, not by the server


@dataclass
class Sample:
    index: int
    scheduled: float
    warmup: bool = False
    sent: float | None = None  # when it left the client (after the concurrency cap)
    token_times: list[float] = field(default_factory=list)  # arrival of each content event
    end: float | None = None
    status: str | None = None  # None: never finished
    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    error: str = ""
    conversation: int | None = None  # multi-turn runs: which conversation, and which turn of it (0-based)
    turn: int | None = None
    answer_parts: list[str] | None = None  # a list: the transport appends each answer text delta to it
    retries: int = 0  # attempts sent after the first (RetryPolicy); the status is the last attempt's
    # Voice turns: seconds of speech streamed, the arrival of the server's `speech_ended`, the
    # audio tokens it counted, and whether its own end-of-speech detection ended the turn.
    speech_s: float | None = None
    speech_ended: float | None = None
    audio_tokens: int = 0
    end_detected: bool | None = None

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts or ())

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def cancelled(self) -> bool:
        return self.status == CANCELLED

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.scheduled if self.token_times else None

    @property
    def e2e(self) -> float | None:
        return self.end - self.scheduled if self.end is not None and self.ok else None

    @property
    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Time per generated token after the first: (end - first token) / (tokens - 1),
        reasoning tokens included, since they cost the same decode steps."""
        generated = self.output_tokens + self.reasoning_tokens
        if not self.ok or not self.token_times or self.end is None or generated < 2:
            return None
        return (self.end - self.token_times[0]) / (generated - 1)


Clock = Callable[[], float]


class Transport(Protocol):
    """Sends one request and records into `sample`: a `token_times` entry per content event
    (read `clock()` as each arrives), the token counts from the usage event, and `status`.
    It must not raise for a server error: that is a status. Cancellation must propagate.
    A retry (`museserve.client.RetryPolicy`) is sent only while nothing was received, and
    counted in `retries`; the latency still runs from `scheduled`, through every attempt."""

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None: ...

    async def close(self) -> None: ...
