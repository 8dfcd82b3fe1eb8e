"""ChatService.Converse over a voice session: the API edge of live voice.

The first message opens the session (`start`); then each message is handed to the session
in order by a reader task while this generator writes the session's events. Every refusal
(a message out of order, a chunk over a limit, bytes that do not parse) ends the call with
its status, naming the field. The client half-closing its stream ends the session once the
answer in flight has finished; a client that goes away cancels this generator, and closing
the session ends its request on the replica at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from museserve.api.convert import event_to_pb, request_from_pb
from museserve.api.grpc_decode import Undecodable
from museserve.domain import Identity
from museserve.errors import Cancelled, Internal, InvalidArgument, MuseError
from museserve.gateway.gateway import Gateway, MetadataSink
from museserve.v1 import chat_pb2 as pb
from museserve.voice.entry import open_voice
from museserve.voice.events import PCM16, AnswerEvent, SpeechEnded, VoiceEvent, VoiceSettings
from museserve.voice.session import VoiceSession

logger = logging.getLogger(__name__)

_ENCODINGS = {pb.AUDIO_ENCODING_PCM16: PCM16}


async def converse(
    gateway: Gateway,
    messages: AsyncIterator[pb.ConverseRequest],
    identity: Identity,
    request_id: str,
    on_metadata: MetadataSink,
) -> AsyncIterator[pb.ConverseEvent]:
    """The call's events; errors are MuseErrors (the caller sets the status)."""
    messages = aiter(messages)
    first = await anext(messages, None)
    if isinstance(first, Undecodable):
        raise InvalidArgument(f"the message does not parse: {first.reason}", field="start")
    if first is None or first.WhichOneof("message") != "start":
        raise InvalidArgument("the first message of a Converse call must be start", field="start")
    session = await open_voice(gateway, settings_from_pb(first.start, request_id, identity), on_metadata)
    inbox = _Inbox(messages)
    reader = asyncio.get_running_loop().create_task(_read(session, inbox))
    try:
        async for event in session.events():
            out = event_to_converse_pb(event, request_id)
            if out is not None:
                yield out
    except MuseError:
        await inbox.drain(reader)
        raise
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await session.close()


def settings_from_pb(start: pb.SessionStart, request_id: str, identity: Identity) -> VoiceSettings:
    request = request_from_pb(start.request, request_id, identity)
    encoding = _ENCODINGS.get(start.audio_format.encoding)
    if encoding is None:
        raise InvalidArgument(
            f"audio encoding {start.audio_format.encoding} is not supported; use AUDIO_ENCODING_PCM16",
            field="start.audio_format.encoding",
        )
    return VoiceSettings(
        request=request,
        sample_rate_hz=start.audio_format.sample_rate_hz,
        encoding=encoding,
        vad_silence_ms=start.server_vad_silence_ms if start.HasField("server_vad_silence_ms") else None,
        audio_field="audio.data",
        format_field="start.audio_format",
    )


class _Inbox:
    """The client's messages, with the time the last one came. A refused session's call ends
    only once the client stops writing (half-close, a pause of `QUIET_S`, at most `DRAIN_S`):
    a client whose write is in flight when the call ends sees INTERNAL instead of the refusal."""

    QUIET_S = 0.1
    DRAIN_S = 2.0

    def __init__(self, messages: AsyncIterator[pb.ConverseRequest]):
        self._messages = messages
        self.last_at = time.monotonic()

    @property
    def cancelled(self) -> bool:
        """The client went away (Serve's proxy ends its input stream then, as on half-close)."""
        is_cancelled = getattr(self._messages, "is_cancelled", None)
        return bool(is_cancelled()) if callable(is_cancelled) else False

    async def __aiter__(self) -> AsyncIterator[pb.ConverseRequest]:
        async for msg in self._messages:
            self.last_at = time.monotonic()
            yield msg

    async def drain(self, reader: asyncio.Task) -> None:
        until = time.monotonic() + self.DRAIN_S
        while not reader.done() and time.monotonic() < until and time.monotonic() - self.last_at < self.QUIET_S:
            await asyncio.sleep(self.QUIET_S / 4)


async def _read(session: VoiceSession, messages: _Inbox) -> None:
    """Hands each message to the session; refusals fail the session (its events raise them),
    after which the rest is read and dropped."""
    try:
        async for msg in messages:
            if session.failed:
                continue
            if isinstance(msg, Undecodable):
                raise InvalidArgument(f"the message does not parse: {msg.reason}", field="message")
            kind = msg.WhichOneof("message")
            if kind == "audio":
                await session.audio(msg.audio.data)
            elif kind == "end_of_speech":
                await session.end_of_speech()
            elif kind == "start":
                raise InvalidArgument("start opens the session and comes only first", field="start")
            else:
                raise InvalidArgument("a Converse message sets one of start, audio, end_of_speech", field="message")
        if messages.cancelled:
            await session.abort(Cancelled("the client cancelled the call"))
        else:
            await session.finish()
    except MuseError as e:
        await session.abort(e)
    except Exception:
        logger.exception("voice session %s: reading the client's messages failed", session.settings.request.request_id)
        await session.abort(Internal(f"internal error; request id {session.settings.request.request_id}"))


def event_to_converse_pb(event: VoiceEvent, request_id: str) -> pb.ConverseEvent | None:
    match event:
        case SpeechEnded(turn, seconds, tokens, detected):
            ended = pb.SpeechEnded(audio_seconds=seconds, audio_tokens=tokens, detected=detected)
            return pb.ConverseEvent(turn=turn, speech_ended=ended)
        case AnswerEvent(turn, answer):
            return pb.ConverseEvent(turn=turn, chat=event_to_pb(answer, request_id))
    return None  # SpeechStarted: the client knows when it speaks
