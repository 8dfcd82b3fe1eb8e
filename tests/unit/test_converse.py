"""Converse end to end in one process: a real gRPC server and client over a gateway whose pool is a
real muse-tiny engine (no Ray). Speech streamed in chunks answers as the same audio sent whole,
barge-in cuts and charges what was streamed, every limit is refused naming its field, and a
client that leaves mid-turn frees the replica's request at once."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from museserve.domain import AudioPart, ChatRequest, Message, Role, SamplingParams, TextPart
from museserve.preprocess.preprocessor import Preprocessor
from museserve.v1 import chat_pb2 as pb
from tests.voice_support import (
    END,
    POOL,
    Conversation,
    Refusal,
    VoiceServer,
    audio,
    chunks,
    converse,
    read_all,
    speech,
    start,
    voice_config,
    wav,
)

GREEDY = pb.SamplingParams(temperature=0.0, max_output_tokens=12)
SYSTEM = "Answer the question you hear."
RATE = 16_000


async def whole_clip_answer(server: VoiceServer, samples, request_id: str = "whole") -> tuple[str, int]:
    """The same conversation with the speech as one WAV clip, prepared and generated directly."""
    config = server.config
    pre = Preprocessor.for_pools(config)[POOL]
    messages = (Message(Role.SYSTEM, (TextPart(SYSTEM),)), Message(Role.USER, (AudioPart(wav(samples), "wav"),)))
    request = ChatRequest(
        request_id, messages, model=POOL, sampling=SamplingParams(temperature=0.0, max_output_tokens=12)
    )
    prepared = pre.prepare(request, config.pools[0])
    out = [chunk async for chunk in server.engine.generate(prepared)]
    return "".join(c.text for c in out), out[-1].usage.prompt_tokens


@pytest.mark.parametrize("chunk_ms", [20, 130])
async def test_streamed_speech_answers_as_the_same_audio_sent_whole(chunk_ms: int) -> None:
    server = VoiceServer(voice_config())
    samples = speech(2.5, seed=1)
    async with server.serving() as stub:
        got = await converse(stub, [start(SYSTEM, sampling=GREEDY), *map(audio, chunks(samples, ms=chunk_ms)), END])
        text, prompt_tokens = await whole_clip_answer(server, samples)
    (turn,) = got.turns.values()
    assert turn.text == text and text
    assert turn.usage.prompt_tokens == prompt_tokens
    assert turn.speech_ended.audio_tokens == 63 and not turn.speech_ended.detected  # 2.5 s: 250 frames, 4 a token
    assert turn.finish == pb.FINISH_REASON_LENGTH


async def test_barge_in_cuts_the_answer_charges_what_streamed_and_keeps_the_history_cached() -> None:
    server = VoiceServer(voice_config())
    long = pb.SamplingParams(temperature=0.0, max_output_tokens=400, ignore_eos=True)
    async with server.serving() as stub:
        call = stub.Converse()
        await call.write(start(SYSTEM, sampling=long))
        for data in chunks(speech(1.5, seed=2)):
            await call.write(audio(data))
        await call.write(END)
        conversation = Conversation()
        while True:  # read into the first answer, then speak over it
            turn = conversation.add(await call.read())
            if len(turn.text) > 20:
                break
        for data in chunks(speech(1.0, seed=3)):
            await call.write(audio(data))
        await call.write(END)
        await call.done_writing()
        await read_all(call, conversation)
    first, second = conversation.turns[0], conversation.turns[1]
    assert first.finish == pb.FINISH_REASON_CANCELLED
    assert 0 < first.usage.output_tokens < 400  # what was streamed before the cut, no more
    assert second.finish == pb.FINISH_REASON_LENGTH and second.usage.output_tokens == 400
    # The second turn's prompt repeats the first turn's speech and the answer heard: its KV came from the cache.
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 16
    # Output charged: what each answer streamed, nothing past the cut.
    charged = server.observer.token_counts["anonymous", "output"]
    assert charged == first.usage.output_tokens + second.usage.output_tokens


async def test_a_client_gone_mid_turn_frees_the_replicas_request_at_once() -> None:
    server = VoiceServer(voice_config())
    async with server.serving() as stub:
        call = stub.Converse()
        await call.write(start(SYSTEM, sampling=GREEDY))
        for data in chunks(speech(1.0, seed=4)):
            await call.write(audio(data))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if server.engine.scheduler.num_running == 1:
                break
        assert server.engine.scheduler.num_running == 1  # the open turn holds its request
        call.cancel()
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not server.engine.requests:
                break
        assert not server.engine.requests and server.engine.scheduler.num_running == 0
        assert server.engine.blocks.usage == 0.0


async def refused(server: VoiceServer, messages: list[pb.ConverseRequest], pace_s: float = 0.0) -> Refusal:
    async with server.serving() as stub:
        with pytest.raises(Refusal) as caught:
            await converse(stub, messages, pace_s)
    return caught.value


SECOND = chunks(speech(0.2), ms=20)


@pytest.mark.parametrize(
    ("messages", "code", "field"),
    [
        ([audio(SECOND[0])], grpc.StatusCode.INVALID_ARGUMENT, "start"),
        ([start(rate=100)], grpc.StatusCode.INVALID_ARGUMENT, "start.audio_format.sample_rate_hz"),
        ([start(rate=96000)], grpc.StatusCode.INVALID_ARGUMENT, "start.audio_format.sample_rate_hz"),
        (
            [start(encoding=pb.AUDIO_ENCODING_UNSPECIFIED)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "start.audio_format.encoding",
        ),
        ([start(server_vad_silence_ms=3)], grpc.StatusCode.INVALID_ARGUMENT, "server_vad_silence_ms"),
        ([start(), END], grpc.StatusCode.INVALID_ARGUMENT, "end_of_speech"),
        ([start(), audio(SECOND[0]), start()], grpc.StatusCode.INVALID_ARGUMENT, "start"),
        ([start(), audio(b"\x01\x02\x03")], grpc.StatusCode.INVALID_ARGUMENT, "audio.data"),
        ([start(), audio(b"")], grpc.StatusCode.INVALID_ARGUMENT, "audio.data"),
        ([start(), audio(b"\0" * 70_000)], grpc.StatusCode.INVALID_ARGUMENT, "audio.data"),
        ([start(), pb.ConverseRequest()], grpc.StatusCode.INVALID_ARGUMENT, "message"),
    ],
)
async def test_each_malformed_or_out_of_order_message_is_refused_naming_its_field(messages, code, field) -> None:
    error = await refused(VoiceServer(voice_config()), messages)
    assert (error.code, error.fields) == (code, (field,))


async def test_a_turn_over_its_length_is_refused_naming_the_audio() -> None:
    error = await refused(
        VoiceServer(voice_config({"max_turn_seconds": 0.5})), [start(), *map(audio, chunks(speech(1.0)))]
    )
    assert (error.code, error.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ("audio.data",))
    assert "voice.max_turn_seconds" in error.details


async def test_chunks_faster_than_the_rate_limit_are_refused() -> None:
    error = await refused(VoiceServer(voice_config({"max_chunks_per_second": 5})), [start(), *map(audio, SECOND)])
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "voice.max_chunks_per_second" in error.details


async def held_open(server: VoiceServer, messages: list[pb.ConverseRequest]) -> Refusal:
    """Writes `messages`, then neither writes nor half-closes: reads until the server ends the call."""
    async with server.serving() as stub:
        call = stub.Converse()
        for message in messages:
            await call.write(message)
        with pytest.raises(Refusal) as caught:
            await read_all(call, Conversation())
    return caught.value


async def test_an_idle_session_and_a_session_past_its_length_end() -> None:
    idle = await held_open(VoiceServer(voice_config({"idle_timeout_s": 0.6})), [start(), audio(SECOND[0])])
    assert idle.code == grpc.StatusCode.DEADLINE_EXCEEDED and "voice.idle_timeout_s" in idle.details
    config = voice_config({"max_session_seconds": 0.6, "idle_timeout_s": 60})
    long = await held_open(VoiceServer(config), [start(), *[audio(c) for c in SECOND[:3]]])
    assert long.code == grpc.StatusCode.DEADLINE_EXCEEDED and "voice.max_session_seconds" in long.details


async def test_speech_is_charged_to_the_token_rate_limit_as_it_arrives() -> None:
    tiers = {"default": {"tenant": {"tokens_per_minute": 60, "token_burst": 120}}}
    messages = [start(), *map(audio, chunks(speech(8.0), ms=100))]
    error = await refused(VoiceServer(voice_config(tiers=tiers)), messages, pace_s=0.01)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in error.details


async def test_a_model_without_audio_input_is_refused_before_any_audio() -> None:
    server = VoiceServer(voice_config())
    request = start()
    request.start.request.model = "nonexistent"
    error = await refused(server, [request])
    assert error.code == grpc.StatusCode.NOT_FOUND or error.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_server_detected_turns_open_on_speech_and_silence_never_cuts_an_answer() -> None:
    import numpy as np

    server = VoiceServer(voice_config())
    sampling = pb.SamplingParams(temperature=0.0, max_output_tokens=12, ignore_eos=True)
    quiet = np.zeros(RATE, "<i2")
    audio_in = np.concatenate([quiet[: RATE // 2], speech(1.5, seed=9), quiet, quiet])  # a microphone left open
    async with server.serving() as stub:
        got = await converse(stub, [start(SYSTEM, sampling=sampling, server_vad_silence_ms=300),
                                    *map(audio, chunks(audio_in, ms=20))])  # fmt: skip
    (turn,) = got.turns.values()  # the silence before and after the speech opened no turn
    assert turn.speech_ended.detected and 1.5 <= turn.speech_ended.audio_seconds <= 2.2
    assert turn.finish == pb.FINISH_REASON_LENGTH and turn.usage.output_tokens == 12
