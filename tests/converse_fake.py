"""A fake ChatService.Converse on grpc.aio, for the client-side tests (`museserve talk`, the
load tester's voice sessions). It numbers turns from 0 and ends one at `end_of_speech` or,
with `server_vad_silence_ms`, once that much silence follows speech; it answers each turn
with `speech_ended`, its reasoning and text deltas, `usage` and `finish`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc

from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc

AUDIO_TOKENS_PER_SECOND = 25
PROMPT_TOKENS_BESIDE_AUDIO = 5


def _chat(**event: object) -> pb.ChatEvent:
    return pb.ChatEvent(**event)  # type: ignore[arg-type]


class FakeConverse(chat_pb2_grpc.ChatServiceServicer):
    """`refuse`: (code, details) every session is refused with, after its `start`.
    `fail_on_turn`: the turn whose end is answered with UNAVAILABLE instead of an answer.
    `delay_s`: the pause between a turn's end and its first token."""

    def __init__(
        self, answer: Sequence[str] = ("hel", "lo"), reasoning: Sequence[str] = (), delay_s: float = 0.0,
        refuse: tuple[grpc.StatusCode, str] | None = None, fail_on_turn: int | None = None,
    ):  # fmt: skip
        self.answer, self.reasoning, self.delay_s = tuple(answer), tuple(reasoning), delay_s
        self.refuse, self.fail_on_turn = refuse, fail_on_turn
        self.starts: list[pb.SessionStart] = []
        self.metadata: list[dict[str, str]] = []
        self.turn_audio: list[bytes] = []  # each ended turn's speech, in order
        self.chunk_times: list[float] = []  # time.monotonic() of each audio chunk's arrival
        self.ends: list[str] = []  # per ended turn: "end_of_speech" or "detected"
        self.sessions_closed = 0  # calls that ended with the client's half-close

    def _answer(self, turn: int, speech: bytes, rate: int, detected: bool) -> list[pb.ConverseEvent]:
        seconds = len(speech) / 2 / rate
        tokens = round(seconds * AUDIO_TOKENS_PER_SECOND)
        events = [pb.ConverseEvent(turn=turn, speech_ended=pb.SpeechEnded(audio_seconds=seconds, audio_tokens=tokens,
                                                                          detected=detected))]  # fmt: skip
        events += [pb.ConverseEvent(turn=turn, chat=_chat(reasoning_delta=r)) for r in self.reasoning]
        events += [pb.ConverseEvent(turn=turn, chat=_chat(text_delta=t)) for t in self.answer]
        usage = pb.Usage(prompt_tokens=tokens + PROMPT_TOKENS_BESIDE_AUDIO, output_tokens=len(self.answer),
                         reasoning_tokens=len(self.reasoning))  # fmt: skip
        events.append(pb.ConverseEvent(turn=turn, chat=_chat(usage=usage)))
        finish = pb.Finish(reason=pb.FINISH_REASON_STOP, model="fake-model", request_id=f"turn-{turn}")
        events.append(pb.ConverseEvent(turn=turn, chat=_chat(finish=finish)))
        return events

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ConverseEvent]:
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        start: pb.SessionStart | None = None
        speech, turn = bytearray(), 0
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if start is None:
                if kind != "start":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be start")
                start = request.start
                self.starts.append(start)
                if self.refuse is not None:
                    await context.abort(*self.refuse)
                continue
            rate = start.audio_format.sample_rate_hz
            if kind == "audio":
                self.chunk_times.append(time.monotonic())
                speech += request.audio.data
                silent_ms = (len(speech) - len(speech.rstrip(b"\0"))) // 2 * 1000 / rate
                detected = start.HasField("server_vad_silence_ms") and silent_ms >= start.server_vad_silence_ms
                if not detected or len(speech.rstrip(b"\0")) == 0:
                    continue
            elif kind != "end_of_speech":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected {kind}")
            self.turn_audio.append(bytes(speech))
            self.ends.append("end_of_speech" if kind == "end_of_speech" else "detected")
            if turn == self.fail_on_turn:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"turn {turn} failed")
            await asyncio.sleep(self.delay_s)
            for event in self._answer(turn, bytes(speech), rate, kind == "audio"):
                yield event
            speech, turn = bytearray(), turn + 1
        self.sessions_closed += 1


async def serve_fake(service: FakeConverse) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"
