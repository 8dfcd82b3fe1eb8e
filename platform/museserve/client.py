"""A small gRPC client for ChatService, used by `museserve chat` and by the tests, and the
retry policy it shares with the load tester.

Retries (`RetryPolicy`): a call that fails with UNAVAILABLE, or with CANCELLED that this
client did not ask for, before it received any output is sent again after an exponential
back-off with jitter, or after the server's RetryInfo delay where that is longer, up to
`max_attempts` attempts and within the call's one deadline. A stream that has yielded an
event fails as it is: its output cannot be taken back. Nothing else is retried: the same
request would fail the same way (INVALID_ARGUMENT, ...), or retrying at once adds to an
overload (RESOURCE_EXHAUSTED: wait its RetryInfo delay, then decide).
"""

from __future__ import annotations

import mimetypes
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc

T = TypeVar("T")

MODES = {"instant": pb.MODE_INSTANT, "thinking": pb.MODE_THINKING, "contemplating": pb.MODE_CONTEMPLATING}
AUDIO_FORMATS = {".wav": "wav", ".flac": "flac"}


def user_content(text: str, images: Sequence[Path] = (), audio: Sequence[Path] = ()) -> list[pb.ContentPart]:
    parts = [pb.ContentPart(text=text)]
    for path in images:
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(pb.ContentPart(image=pb.Image(data=path.read_bytes(), mime_type=mime)))
    for path in audio:
        fmt = AUDIO_FORMATS.get(path.suffix.lower(), path.suffix.lstrip(".").lower())
        parts.append(pb.ContentPart(audio=pb.Audio(data=path.read_bytes(), format=fmt)))
    return parts


def build_request(
    text: str,
    *,
    system: str = "",
    model: str = "",
    adapter: str = "",
    mode: str = "instant",
    thinking_budget: int | None = None,
    max_output_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    images: Sequence[Path] = (),
    audio: Sequence[Path] = (),
) -> pb.ChatRequest:
    messages = []
    if system:
        messages.append(pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=system)]))
    messages.append(pb.Message(role=pb.ROLE_USER, content=user_content(text, images, audio)))
    sampling = pb.SamplingParams(stop=list(stop))
    if max_output_tokens is not None:
        sampling.max_output_tokens = max_output_tokens
    if temperature is not None:
        sampling.temperature = temperature
    if seed is not None:
        sampling.seed = seed
    mode_params = pb.ModeParams(mode=MODES[mode])
    if thinking_budget is not None:
        mode_params.thinking_budget = thinking_budget
    return pb.ChatRequest(model=model, adapter=adapter, messages=messages, sampling=sampling, mode=mode_params)


# CANCELLED is retried because grpc's server shutdown answers a stream that raced its GOAWAY
# with it, before any output: that request never started (see the README's chaos notes).
RETRYABLE_CODES = frozenset({"UNAVAILABLE", "CANCELLED"})
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # google.rpc.Status, with RetryInfo among its details


@dataclass(frozen=True)
class RetryPolicy:
    """How a call that failed before any output is tried again (see the module docstring)."""

    max_attempts: int = 4  # attempts in all, the first included; 1: never retry
    initial_backoff_s: float = 0.25  # the back-off before the second attempt, before jitter
    max_backoff_s: float = 5.0  # the back-off never grows past this
    multiplier: float = 2.0  # each back-off is this many times the previous one
    jitter: float = 0.5  # each back-off is drawn from [b * (1 - jitter), b]: clients that failed together spread out

    def __post_init__(self) -> None:
        problems = [
            f"{name} {why}"
            for name, bad, why in (
                ("max_attempts", self.max_attempts < 1, "must be >= 1"),
                ("initial_backoff_s", self.initial_backoff_s < 0, "must be >= 0"),
                ("max_backoff_s", self.max_backoff_s < self.initial_backoff_s, "must be >= initial_backoff_s"),
                ("multiplier", self.multiplier < 1, "must be >= 1"),
                ("jitter", not 0 <= self.jitter <= 1, "must be between 0 and 1"),
            )
            if bad
        ]
        if problems:
            raise ValueError("retry policy: " + "; ".join(problems))

    def retries(self, code: str, attempt: int, output_received: bool) -> bool:
        """Whether attempt number `attempt` (1-based), failed with the gRPC code named `code`,
        is followed by another. A caller's own cancel is not a CANCELLED to retry: the
        caller checks that first."""
        return code in RETRYABLE_CODES and not output_received and attempt < self.max_attempts

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The back-off after attempt number `attempt` failed: `initial_backoff_s` grown by
        `multiplier` per attempt up to `max_backoff_s`, less a random share up to `jitter`."""
        base = min(self.initial_backoff_s * self.multiplier ** (attempt - 1), self.max_backoff_s)
        draw = rng.random() if rng is not None else random.random()
        return base * (1.0 - self.jitter * draw)

    def delay_s(self, attempt: int, server_delay_s: float | None = None, rng: random.Random | None = None) -> float:
        """The wait before attempt `attempt + 1`: the back-off, or the server's RetryInfo /
        retry-after delay where it is longer (never sooner than the server asked)."""
        backoff = self.backoff_s(attempt, rng)
        return backoff if server_delay_s is None else max(backoff, server_delay_s)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


def server_retry_delay_s(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> float | None:
    """The RetryInfo delay in a failed call's `grpc-status-details-bin` trailer, if any."""
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToTimedelta().total_seconds()
    return None


def next_attempt_delay_s(
    policy: RetryPolicy, error: grpc.RpcError, attempt: int, output_received: bool, deadline: float | None
) -> float | None:
    """How long to wait before sending again after `error` (a failed call: its code and its
    trailers are read), or None when the error stands. `deadline`: time.monotonic() bound of
    the whole call; a retry that could not start before it is not made."""
    if not policy.retries(error.code().name, attempt, output_received):
        return None
    delay = policy.delay_s(attempt, server_retry_delay_s(error.trailing_metadata()))
    if deadline is not None and time.monotonic() + delay >= deadline:
        return None
    return delay


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class ConverseCall(Iterator[pb.ConverseEvent], Protocol):
    """A Converse call of the blocking client: its events, and `cancel()` to end the session."""

    def cancel(self) -> bool: ...


class ChatClient:
    """A blocking client; `metadata` carries identity (`x-api-key`, `x-user-id`); `retry`
    says how calls that fail before any output are tried again (`NO_RETRY`: never). Each
    call's `timeout` bounds all its attempts together."""

    def __init__(self, address: str, metadata: Sequence[tuple[str, str]] = (), retry: RetryPolicy = DEFAULT_RETRY):
        self.channel = grpc.insecure_channel(address)
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.metadata = tuple(metadata)
        self.retry = retry

    def chat(self, request: pb.ChatRequest, timeout: float | None = None) -> pb.ChatResponse:
        return self._unary(self.stub.Chat, request, timeout)

    def stream(self, request: pb.ChatRequest, timeout: float | None = None) -> RetryingStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        return RetryingStream(
            lambda: self.stub.ChatStream(request, timeout=_remaining(deadline), metadata=self.metadata),
            self.retry,
            deadline,
        )

    def converse(self, requests: Iterator[pb.ConverseRequest], timeout: float | None = None) -> ConverseCall:
        """A Converse session: `requests` is read on gRPC's own thread as it yields, and the
        result is both the event iterator and the call (`cancel()` ends the session). Never
        retried: speech already sent cannot be taken back."""
        return self.stub.Converse(requests, timeout=timeout, metadata=self.metadata)

    def count_tokens(self, request: pb.ChatRequest, timeout: float | None = None) -> pb.CountTokensResponse:
        return self._unary(self.stub.CountTokens, request, timeout)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._unary(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    def close(self) -> None:
        self.channel.close()

    def _unary(self, method: Callable[..., T], request: object, timeout: float | None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        attempt = 1
        while True:
            try:
                return method(request, timeout=_remaining(deadline), metadata=self.metadata)
            except grpc.RpcError as e:
                delay = next_attempt_delay_s(self.retry, e, attempt, False, deadline)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1


class RetryingStream(Iterator[pb.ChatEvent]):
    """A ChatStream call that is sent again while it has yielded nothing (see `RetryPolicy`).
    `cancel()`, the metadata, `code()` and `details()` are those of the attempt in progress;
    `retries` counts the attempts made after the first."""

    def __init__(self, start: Callable[[], grpc.Call], policy: RetryPolicy, deadline: float | None):
        self._start = start
        self._policy = policy
        self._deadline = deadline
        self._call = start()
        self._received = False
        self._cancelled = False
        self.retries = 0

    def __iter__(self) -> RetryingStream:
        return self

    def __next__(self) -> pb.ChatEvent:
        while True:
            try:
                event = next(self._call)  # type: ignore[call-overload]
            except grpc.RpcError as e:
                attempt = self.retries + 1
                delay = None if self._cancelled else next_attempt_delay_s(self._policy, e, attempt, self._received,
                                                                          self._deadline)  # fmt: skip
                if delay is None:
                    raise
                time.sleep(delay)
                if self._cancelled:
                    raise
                self.retries += 1
                self._call = self._start()
                continue
            self._received = True
            return event

    def cancel(self) -> bool:
        self._cancelled = True
        return self._call.cancel()

    def initial_metadata(self):
        return self._call.initial_metadata()

    def trailing_metadata(self):
        return self._call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call.code()

    def details(self) -> str:
        return self._call.details()
