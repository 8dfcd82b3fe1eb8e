"""One user turn of a voice session: a live request on a model replica, grown as speech arrives.

The turn opens its request with the prompt before the speech (`LivePrompt`), so that prefix is
prefilled while the user talks. Speech becomes token rows (`StreamingAudioFeatures`) as it
arrives; a sender task ships them to the replica, one call at a time: what arrived while a
call was out goes in the next, so a slow hop coalesces chunks instead of queueing calls. Each
batch's tokens are charged to the caller's token rate limit before they are sent, so a long
monologue pays as it goes. `close` sends the rest and the turn's tail, and the answer streams.

Order is kept by construction: the sender is the only caller of `extend` for its request, and
it awaits each call before the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from museserve.domain import ChatRequest
from museserve.engine.media import FEATURE_BYTES
from museserve.errors import InvalidArgument
from museserve.messages import GenerationChunk, MediaSegment, PreparedRequest
from museserve.preprocess.preprocessor import LivePrompt

if TYPE_CHECKING:
    from museserve.voice.ports import VoicePorts  # ports names LivePool, defined here


class LivePool(Protocol):
    """A model pool as a live turn uses it: `MuseEngine` itself, or `serve.handles.HandlePoolClient`."""

    def generate(self, request: PreparedRequest, *, live: bool = False) -> AsyncIterator[GenerationChunk]: ...

    async def extend(
        self, request_id: str, token_ids: list[int], media: tuple[MediaSegment, ...] = (), *, close: bool = False
    ) -> None: ...


class LiveTurn:
    def __init__(
        self,
        index: int,
        prompt: LivePrompt,
        pool: LivePool,
        charge_tokens: Callable[[int], Awaitable[None]],
        feature_dim: int,
        slot: AbstractContextManager[object],
    ):
        """`slot`: the pool's admission slot, entered by the caller; the turn exits it when it ends."""
        self.index = index
        self.prompt = prompt
        self.request_id = prompt.prepared.request_id
        self._pool = pool
        self._charge_tokens = charge_tokens
        self._row_bytes = feature_dim * FEATURE_BYTES
        self._feature_dim = feature_dim
        self._pending = bytearray()  # rows not yet sent
        self._closing = False
        self._wake = asyncio.Event()
        self._stream: AsyncIterator[GenerationChunk] | None = None
        self._sender: asyncio.Task | None = None
        self.num_audio_tokens = 0  # rows added
        self.num_sent_tokens = 0  # rows the replica has
        self.segments: list[MediaSegment] = []  # as sent; starts relative to the speech's first token
        self.speech_ended = False
        self.audio_seconds = 0.0  # of speech taken in so far
        self._slot = slot
        self.ended = False

    @property
    def num_prompt_tokens(self) -> int:
        """The turn's whole prompt once closed: before the speech, the speech, the tail."""
        return self.prompt.prepared.num_prompt_tokens + self.num_audio_tokens + len(self.prompt.tail_ids)

    async def open(self) -> None:
        """Admits the live request (its prefix starts prefilling) and starts the sender."""
        self._stream = aiter(self._pool.generate(self.prompt.prepared, live=True))
        await anext(self._stream)  # the empty chunk: admitted, `extend` finds it from now on
        self._sender = asyncio.get_running_loop().create_task(self._send())

    def add(self, rows: bytes) -> None:
        """Token rows of new speech (float16, whole rows); raises the sender's error, if it failed."""
        self._raise_if_failed()
        if not rows:
            return
        n = len(rows) // self._row_bytes
        if self.num_audio_tokens + n > self.prompt.max_audio_tokens:
            raise InvalidArgument(
                f"the turn's speech needs {self.num_audio_tokens + n}+ tokens; the context window of model "
                f"{self.prompt.prepared.pool} leaves it {self.prompt.max_audio_tokens} after the conversation "
                "and the answer's budget",
                field="audio",
            )
        self.num_audio_tokens += n
        self._pending += rows
        self._wake.set()

    @property
    def prompt_closed(self) -> bool:
        return self._closing

    async def close(self) -> None:
        """Sends what is pending and the tail, closing the prompt; returns once the replica has it."""
        assert self._sender is not None, "open the turn first"
        self._closing = True
        self._wake.set()
        await asyncio.shield(self._sender)

    def answer(self) -> AsyncIterator[GenerationChunk]:
        assert self._stream is not None and self._closing, "close the turn first"
        return self._stream

    async def abort(self) -> None:
        """Ends the live request now (its blocks are freed; full ones stay in the prefix cache)
        and leaves the admission slot. Idempotent."""
        if self.ended:
            return
        self.ended = True
        self._slot.__exit__(None, None, None)
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        stream = self._stream
        if stream is not None and hasattr(stream, "aclose"):
            await stream.aclose()

    def _raise_if_failed(self) -> None:
        sender = self._sender
        if sender is not None and sender.done() and not sender.cancelled() and sender.exception() is not None:
            raise sender.exception()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, closing = bytes(self._pending), self._closing
            self._pending.clear()
            n = len(rows) // self._row_bytes
            ids: list[int] = [self.prompt.audio_placeholder] * n
            media: tuple[MediaSegment, ...] = ()
            if n:
                await self._charge_tokens(n)
                digest = hashlib.sha256(rows).hexdigest()
                media = (MediaSegment("audio", 0, n, self._feature_dim, rows, digest),)
            if closing:
                ids += self.prompt.tail_ids
            if ids:
                await self._pool.extend(self.request_id, ids, media, close=closing)
            if n:
                self.segments.append(MediaSegment("audio", self.num_sent_tokens, n, self._feature_dim, rows, digest))
                self.num_sent_tokens += n
            if closing:
                return


def speech_segments(segments: Sequence[MediaSegment], start: int) -> tuple[MediaSegment, ...]:
    """A turn's segments placed at `start` in a later prompt (its earlier speech, kept as history)."""
    return tuple(
        MediaSegment(s.kind, start + s.start, s.num_tokens, s.feature_dim, s.features, s.digest) for s in segments
    )


async def open_turn(
    index: int, request: ChatRequest, speech: Sequence[Sequence[MediaSegment]], ports: VoicePorts
) -> LiveTurn:
    """Turn `index` of a session: `request` holds the conversation, its last message the user
    turn whose speech is coming; `speech`, the earlier turns' segments. The turn takes the pool's
    admission slot, is charged one request and its prompt, and its live request is admitted."""
    request = dataclasses.replace(request, request_id=f"{request.request_id}-t{index}")
    prompt = ports.prepare_live(request, speech)
    deadline = time.time() + ports.config.max_turn_seconds + ports.request_timeout_s
    prepared = dataclasses.replace(prompt.prepared, deadline_unix_s=deadline, first_token_by_unix_s=0.0)
    prompt = dataclasses.replace(prompt, prepared=prepared)
    slot = ports.admit()
    slot.__enter__()
    turn = LiveTurn(index, prompt, ports.pool, ports.charge_tokens, ports.media.audio_feature_dim, slot)
    try:
        await ports.charge_request(prepared.num_prompt_tokens + len(prompt.tail_ids))
        await turn.open()
    except BaseException:
        await turn.abort()
        raise
    return turn
