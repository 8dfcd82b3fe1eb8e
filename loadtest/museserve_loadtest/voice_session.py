"""One voice session over a Converse call: turns spoken at their times, each answer timed
from the end of its speech, one Sample per turn.

Invariants:
- A turn's Sample is `scheduled` at its end of speech: when its last chunk is due (realtime),
  or once it was sent (not realtime). Its `ttft` is then end of speech -> first answer token
  and its `e2e` end of speech -> finish; `sent` is when its first chunk went out.
- Chunk i of a turn is due at the turn's start + chunk_offsets[i] on the run's clock: a late
  chunk goes at once and does not move the later ones (no drift).
- Turn 0 speaks at the session's start; turn k > 0 at the end of turn k - 1 plus that turn's
  think time. Each turn's speech is made just before it (voice_audio.UtteranceSource).
- A turn fails on an error status, on an answer unfinished `timeout_s` after its end of speech
  (DEADLINE_EXCEEDED), or on an event of another turn (TURN_MISMATCH: the server's
  end-of-speech detection split the utterance). A failed turn ends its session; later turns
  leave no record. Cancelled (the hard stop), the turn in progress is CLIENT_CANCELLED.
- Sessions are never retried: speech already sent cannot be taken back.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from museserve.client import MODES
from museserve.talk.speech import (
    END_OF_SPEECH,
    VAD_GRACE_S,
    audio_message,
    chunk_offsets,
    pcm16_seconds,
    silence,
    split_chunks,
    start_message,
)
from museserve.v1 import chat_pb2 as pb

from .grpc_transport import GrpcTransport, record_chat_event
from .records import CANCELLED, Clock, Sample
from .voice_audio import UtteranceSource
from .voice_plan import VoiceSessionPlan

TURN_MISMATCH = "TURN_MISMATCH"
CLOSE_GRACE_S = 2.0  # after its last turn a session half-closes, then waits this long for the server to end the call
SETTLE_S = 5.0  # after a failed write, how long the call's status may take to arrive


@dataclass(frozen=True)
class StreamEnd:
    status: str  # the gRPC code name; OK when the server ended the call normally
    details: str = ""


class EventPump:
    """Reads a call's events into `queue` as (arrival time, event), then one StreamEnd."""

    def __init__(self, call: grpc.aio.StreamStreamCall, clock: Clock):
        self.call, self.clock = call, clock
        self.queue: asyncio.Queue[tuple[float, pb.ConverseEvent] | StreamEnd] = asyncio.Queue()
        self.speech_ended = asyncio.Event()  # set by each `speech_ended`; cleared as a turn starts
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while (event := await self.call.read()) is not grpc.aio.EOF:
                if event.WhichOneof("event") == "speech_ended":
                    self.speech_ended.set()
                self.queue.put_nowait((self.clock(), event))
            self.queue.put_nowait(StreamEnd("OK"))
        except grpc.aio.AioRpcError as e:
            self.queue.put_nowait(StreamEnd(e.code().name, e.details() or ""))
        except Exception as e:  # a client bug: the turn waiting fails with it rather than at its deadline
            self.queue.put_nowait(StreamEnd("CLIENT_ERROR", f"{type(e).__name__}: {e}"))


def session_request(plan: VoiceSessionPlan) -> pb.ChatRequest:
    messages = [pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=plan.system_prompt)])]
    sampling = pb.SamplingParams(max_output_tokens=plan.max_output_tokens)
    if plan.temperature is not None:
        sampling.temperature = plan.temperature
    mode = pb.ModeParams(mode=MODES[plan.mode.mode])
    if plan.mode.thinking_budget is not None:
        mode.thinking_budget = plan.mode.thinking_budget
    return pb.ChatRequest(model=plan.model, messages=messages if plan.system_prompt else [], sampling=sampling,
                          mode=mode)  # fmt: skip


def _record_end(sample: Sample, end: StreamEnd) -> None:
    # A call that ends OK while a turn still waits for its answer was cut short somewhere.
    sample.status, sample.error = ("STREAM_TRUNCATED" if end.status == "OK" else end.status), end.details


class VoiceSession:
    def __init__(
        self, plan: VoiceSessionPlan, transport: GrpcTransport, source: UtteranceSource, clock: Clock,
        timeout_s: float | None,
    ):  # fmt: skip
        self.plan, self.transport, self.source, self.clock, self.timeout_s = plan, transport, source, clock, timeout_s
        self.call: grpc.aio.StreamStreamCall | None = None
        self.pump: EventPump | None = None

    async def run(self, samples: list[Sample], warmup_s: float, hard_stop_s: float) -> None:
        """Speaks the planned turns, appending a Sample per turn started; raises only CancelledError."""
        plan, sample = self.plan, None
        try:
            for k, turn in enumerate(plan.turns):
                due = plan.start_s if sample is None else (sample.end or 0.0) + plan.turns[k - 1].think_time_s
                if due >= hard_stop_s:
                    return
                await self._sleep_until(due)
                pcm = await asyncio.to_thread(self.source.pcm, turn.utterance_s, turn.audio_seed, turn.corpus_index)
                sample = Sample(len(samples), due, warmup=plan.start_s < warmup_s, conversation=plan.session, turn=k,
                                speech_s=pcm16_seconds(pcm, plan.sample_rate))  # fmt: skip
                samples.append(sample)
                if not await self._turn(k, sample, pcm):
                    return
            await self._close()
        except asyncio.CancelledError:
            if sample is not None and sample.status is None:
                sample.status = CANCELLED
            raise
        except Exception as e:  # a client bug must not end the run: it is an error like any other
            if sample is not None and sample.status is None:
                sample.status, sample.error = "CLIENT_ERROR", f"{type(e).__name__}: {e}"
        finally:
            if sample is not None and sample.end is None:
                sample.end = self.clock()
            if self.pump is not None:
                self.pump.task.cancel()
            if self.call is not None:
                self.call.cancel()  # a no-op once the call ended; else it ends the session at once

    @property
    def _open_call(self) -> grpc.aio.StreamStreamCall:
        assert self.call is not None, "the first turn opens the call"
        return self.call

    @property
    def _events(self) -> EventPump:
        assert self.pump is not None, "the first turn opens the call"
        return self.pump

    async def _sleep_until(self, t: float) -> None:
        if (delay := t - self.clock()) > 0:
            await asyncio.sleep(delay)

    async def _send(self, message: pb.ConverseRequest) -> bool:
        """False when the call has ended: its status then comes through the pump."""
        try:
            await self._open_call.write(message)
            return True
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return False

    async def _send_chunks(self, chunks: list[bytes], offsets: list[float], start: float, until_heard: bool) -> bool:
        for chunk, offset in zip(chunks, offsets, strict=True):
            if until_heard and self._events.speech_ended.is_set():
                break  # the server heard the end: more audio would open a turn
            if self.plan.realtime:
                await self._sleep_until(start + offset)
            if not await self._send(audio_message(chunk)):
                return False
        return True

    async def _turn(self, k: int, sample: Sample, pcm: bytes) -> bool:
        plan = self.plan
        if self.call is None:
            self.call = self.transport.converse(plan.user, plan.api_key)
            self.pump = EventPump(self.call, self.clock)
            if not await self._send(start_message(session_request(plan), plan.sample_rate,
                                                  plan.server_vad_silence_ms)):  # fmt: skip
                return await self._settle(sample)
        self._events.speech_ended.clear()
        chunks = split_chunks(pcm, plan.sample_rate, plan.chunk_ms)
        offsets = chunk_offsets(chunks, plan.sample_rate)
        start = sample.sent = self.clock()
        sample.scheduled = start + offsets[-1]
        if not await self._send_chunks(chunks, offsets, start, until_heard=False):
            return await self._settle(sample)
        if not plan.realtime:
            sample.scheduled = self.clock()
        if not await self._end_speech(start, pcm16_seconds(pcm, plan.sample_rate)):
            return await self._settle(sample)
        return await self._answer(k, sample)

    async def _end_speech(self, start: float, speech_s: float) -> bool:
        """`end_of_speech`; or silence, paced on from the speech, until the server hears the
        end, and `end_of_speech` after all if it has not VAD_GRACE_S later."""
        plan = self.plan
        if plan.server_vad_silence_ms is None:
            return await self._send(END_OF_SPEECH)
        quiet = split_chunks(silence(plan.server_vad_silence_ms / 1000, plan.sample_rate), plan.sample_rate,
                             plan.chunk_ms)  # fmt: skip
        offsets = chunk_offsets(quiet, plan.sample_rate, start_s=speech_s)
        if not await self._send_chunks(quiet, offsets, start, until_heard=True):
            return False
        try:
            await asyncio.wait_for(self._events.speech_ended.wait(), VAD_GRACE_S)
            return True
        except TimeoutError:
            return await self._send(END_OF_SPEECH)

    async def _answer(self, k: int, sample: Sample) -> bool:
        """Records turn k's events up to its finish: True when it finished."""
        remaining = None if self.timeout_s is None else max(sample.scheduled + self.timeout_s - self.clock(), 0.0)
        try:
            async with asyncio.timeout(remaining):
                while True:
                    item = await self._events.queue.get()
                    if isinstance(item, StreamEnd):
                        _record_end(sample, item)
                        return False
                    at, event = item
                    if event.turn != k:
                        sample.status = TURN_MISMATCH
                        sample.error = f"turn {event.turn} began during turn {k}: was the utterance split?"
                        return False
                    if event.WhichOneof("event") == "speech_ended":
                        ended = event.speech_ended
                        sample.speech_ended, sample.end_detected = at, ended.detected
                        sample.audio_tokens = ended.audio_tokens
                    elif event.WhichOneof("event") == "chat" and record_chat_event(sample, event.chat, at):
                        sample.status, sample.end = "OK", at
                        return True
        except TimeoutError:
            sample.status = "DEADLINE_EXCEEDED"
            sample.error = f"the answer had not finished {self.timeout_s:g} s after the end of speech"
            return False

    async def _settle(self, sample: Sample) -> bool:
        """After a failed write: the call has ended, and its status is the turn's."""
        try:
            async with asyncio.timeout(SETTLE_S):
                while not isinstance(item := await self._events.queue.get(), StreamEnd):
                    pass
            _record_end(sample, item)
        except TimeoutError:
            sample.status, sample.error = "CLIENT_ERROR", "a write failed and the call reported no status"
        return False

    async def _close(self) -> None:
        """Half-closes the stream and gives the server a moment to end the call."""
        try:
            await self._open_call.done_writing()
            async with asyncio.timeout(CLOSE_GRACE_S):
                await self._events.task
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
