"""Live voice in tests: a gateway over a real muse-tiny engine with a real gRPC server (no Ray),
speech as PCM16 chunks, Converse calls, and the fields a refusal names."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import soundfile as sf
from google.rpc import error_details_pb2, status_pb2

from museserve.api.grpc_api import GrpcChatApi
from museserve.config import MuseServeConfig, parse_config
from museserve.engine.engine import MuseEngine
from museserve.gateway.gateway import Gateway
from museserve.gateway.observer import CountingObserver
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.preprocess.pool_model import pool_model
from museserve.replica import build_engine
from museserve.serve.direct_ingress import DirectGrpcIngress
from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc
from tests.support import free_port, text_preprocess

POOL = "muse-tiny"
RATE = 16_000


def voice_config(voice: dict | None = None, tiers: dict | None = None, engine: dict | None = None) -> MuseServeConfig:
    pool = {
        "name": POOL,
        "modes": ["instant", "thinking"],
        "model": {"size": "tiny", "load_format": "dummy", "seed": 0, "dtype": "float32", "device": "cpu"},
        "engine": {"context_length": 4096, "max_output_tokens": 512, "default_max_output_tokens": 16,
                   "default_thinking_budget": 8, "block_size": 16, "max_prefill_chunk": 64,
                   "kv_cache_bytes": 16 << 20, **(engine or {})},
    }  # fmt: skip
    gateway = {"voice": voice or {}, "tiers": tiers or {"default": {}}}
    return parse_config({"pools": [pool], "gateway": gateway}, source="test")


def speech(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """[n] int16: tones gliding under an envelope, with a little noise: speech-like energy."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * math.pi * 0.7 * t + seed)
    voiced = sum(np.sin(2 * math.pi * k * np.cumsum(pitch) / rate) / k for k in (1, 2, 3))
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * 3 * t) ** 2
    signal = 0.25 * voiced * envelope + 0.01 * rng.standard_normal(len(t))
    return np.clip(signal * 32767, -32768, 32767).astype("<i2")


def wav(samples: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def chunks(samples: np.ndarray, rate: int = RATE, ms: float = 20) -> list[bytes]:
    step = max(1, round(rate * ms / 1000))
    return [samples[i : i + step].tobytes() for i in range(0, len(samples), step)]


def start(text: str = "Answer the question you hear.", rate: int = RATE, **fields: object) -> pb.ConverseRequest:
    request = pb.ChatRequest(
        model=POOL, messages=[pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=text)])]
    )
    sampling = fields.pop("sampling", None)
    if sampling is not None:
        request.sampling.CopyFrom(sampling)
    fmt = pb.AudioFormat(encoding=fields.pop("encoding", pb.AUDIO_ENCODING_PCM16), sample_rate_hz=rate)
    return pb.ConverseRequest(start=pb.SessionStart(request=request, audio_format=fmt, **fields))


def audio(data: bytes) -> pb.ConverseRequest:
    return pb.ConverseRequest(audio=pb.AudioChunk(data=data))


END = pb.ConverseRequest(end_of_speech=pb.EndOfSpeech())


@dataclass(frozen=True)
class Refusal(Exception):
    """How the server ended a Converse call that did not end OK."""

    code: grpc.StatusCode
    details: str
    fields: tuple[str, ...]  # what its BadRequest detail names


async def refusal_of(call: grpc.aio.StreamStreamCall) -> Refusal | None:
    code = await call.code()
    if code == grpc.StatusCode.OK:
        return None
    fields: list[str] = []
    for key, value in await call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields += [v.field for v in bad.field_violations]
    return Refusal(code, await call.details(), tuple(fields))


@dataclass
class Turn:
    text: str = ""
    speech_ended: pb.SpeechEnded | None = None
    usage: pb.Usage | None = None
    finish: int | None = None
    first_token_after_s: float | None = None  # from the end of speech being sent


@dataclass
class Conversation:
    turns: dict[int, Turn] = field(default_factory=dict)

    def add(self, event: pb.ConverseEvent) -> Turn:
        turn = self.turns.setdefault(event.turn, Turn())
        kind = event.WhichOneof("event")
        if kind == "speech_ended":
            turn.speech_ended = event.speech_ended
        elif kind == "chat":
            chat = event.chat
            which = chat.WhichOneof("event")
            if which == "text_delta":
                turn.text += chat.text_delta
            elif which == "usage":
                turn.usage = chat.usage
            elif which == "finish":
                turn.finish = chat.finish.reason
        return turn


class VoiceServer:
    """A gateway over one muse-tiny engine, served by a real grpc.aio server on loopback."""

    def __init__(self, config: MuseServeConfig):
        self.config = config
        pool = config.pools[0]
        media = config.preprocess.media
        self.engine: MuseEngine = build_engine(pool, pool_model(pool, media, None).chat_format, media=media)
        self.observer = CountingObserver()
        quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
        self.gateway = Gateway(
            config, text_preprocess(config), {POOL: self.engine}, quota=quota, observer=self.observer
        )
        self.port = free_port()
        self.ingress = DirectGrpcIngress(GrpcChatApi(self.gateway), host="127.0.0.1", port=self.port,
                                         max_message_bytes=8 << 20, request_timeout_s=60, grace_s=1)  # fmt: skip

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[chat_pb2_grpc.ChatServiceStub]:
        await self.ingress.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
                yield chat_pb2_grpc.ChatServiceStub(channel)
        finally:
            await self.ingress.stop()
            self.engine.shutdown()


async def converse(
    stub: chat_pb2_grpc.ChatServiceStub,
    messages: Iterable[pb.ConverseRequest],
    pace_s: float = 0.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Conversation:
    """Sends `messages` (every `pace_s`), half-closes, and folds every event until the call ends;
    raises `Refusal` when it ends with an error."""
    conversation = Conversation()
    call = stub.Converse(metadata=metadata or None)

    async def write_all() -> None:
        try:
            for message in messages:
                if call.done():
                    return
                await call.write(message)
                if pace_s:
                    await asyncio.sleep(pace_s)
            await call.done_writing()
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            pass  # the server ended the call: the reader gets its status

    writer = asyncio.get_running_loop().create_task(write_all())
    try:
        await read_all(call, conversation)
    finally:
        await writer
    return conversation


async def read_all(call: grpc.aio.StreamStreamCall, conversation: Conversation) -> None:
    try:
        while (event := await call.read()) != grpc.aio.EOF:
            conversation.add(event)
    except grpc.aio.AioRpcError:
        pass
    refusal = await refusal_of(call)
    if refusal is not None:
        raise refusal
