"""Converse through Ray Serve: on the gateway's direct port and through Serve's gRPC proxy, speech
streamed in answers as the same audio sent whole in a ChatStream request, and a client that goes
away mid-turn ends the turn's request in the model replica (observed from the replica)."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from museserve.v1 import chat_pb2 as pb
from museserve.v1 import chat_pb2_grpc
from tests.integration.conftest import TEST_KEY
from tests.voice_support import END, audio, chunks, converse, speech, start, wav

pytestmark = pytest.mark.integration

GREEDY = pb.SamplingParams(temperature=0.0, max_output_tokens=16)
SYSTEM = "Answer the question you hear."


async def whole_clip(stub: chat_pb2_grpc.ChatServiceStub, samples, metadata) -> tuple[str, int]:
    request = pb.ChatRequest(
        model="muse-tiny",
        sampling=GREEDY,
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM, content=[pb.ContentPart(text=SYSTEM)]),
            pb.Message(role=pb.ROLE_USER, content=[pb.ContentPart(audio=pb.Audio(data=wav(samples), format="wav"))]),
        ],
    )
    text, prompt_tokens = "", 0
    async for event in stub.ChatStream(request, metadata=metadata):
        if event.WhichOneof("event") == "text_delta":
            text += event.text_delta
        elif event.WhichOneof("event") == "usage":
            prompt_tokens = event.usage.prompt_tokens
    return text, prompt_tokens


def muse_tiny_start() -> pb.ConverseRequest:
    message = start(SYSTEM, sampling=GREEDY)
    message.start.request.model = "muse-tiny"
    return message


@pytest.mark.parametrize("port", ["proxy", "direct"])
async def test_speech_streamed_through_serve_answers_as_the_whole_clip(port, grpc_address, direct_grpc_address) -> None:
    address = grpc_address if port == "proxy" else direct_grpc_address
    metadata = (("x-api-key", TEST_KEY),)
    samples = speech(2.0, seed=7)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        got = await converse(stub, [muse_tiny_start(), *map(audio, chunks(samples, ms=40)), END], metadata=metadata)
        expected = await whole_clip(stub, samples, metadata)
    (turn,) = got.turns.values()
    assert (turn.text, turn.usage.prompt_tokens) == expected
    assert turn.text and turn.finish == pb.FINISH_REASON_LENGTH


@pytest.mark.parametrize("port", ["proxy", "direct"])
async def test_a_client_gone_mid_turn_ends_the_turns_request_in_the_replica(
    port, grpc_address, direct_grpc_address, pool_handle
) -> None:
    address = grpc_address if port == "proxy" else direct_grpc_address
    session = f"voice-{uuid.uuid4().hex[:12]}"
    metadata = (("x-api-key", TEST_KEY), ("x-request-id", session))
    async with grpc.aio.insecure_channel(address) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).Converse(metadata=metadata)
        await call.write(muse_tiny_start())
        for data in chunks(speech(1.0, seed=8), ms=40):
            await call.write(audio(data))
        phase = await asyncio.to_thread(wait_for_phase, pool_handle, f"{session}-t0", {"running"})
        assert phase == "running"  # the open turn is prefilled while the client speaks
        call.cancel()
        phase = await asyncio.to_thread(wait_for_phase, pool_handle, f"{session}-t0", {"cancelled", "failed"})
    assert phase == "cancelled"


def wait_for_phase(pool_handle, request_id: str, phases: set[str], timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        record = pool_handle.stats.remote().result(timeout_s=10)["recent"].get(request_id)
        if record is not None and record["phase"] in phases:
            return record["phase"]
        if time.monotonic() > deadline:
            return record["phase"] if record is not None else "absent"
        time.sleep(0.05)


async def test_the_realtime_websocket_through_serves_http_proxy_prompts_as_the_whole_clip(
    app_config, grpc_address
) -> None:
    """The official client's `realtime.connect` to the app's HTTP port: speech sent as
    `input_audio_buffer.append` makes the prompt the same audio as a clip makes (the GA session
    has no temperature: the model's default samples the answer, so only its length is fixed)."""
    import base64

    import openai

    samples = speech(1.5, seed=11)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{app_config.server.http_port}/v1", api_key=TEST_KEY,
                                max_retries=0)  # fmt: skip
    async with client.realtime.connect(model="muse-tiny") as conn:
        assert (await conn.recv()).type == "session.created"
        await conn.session.update(session={"type": "realtime", "instructions": SYSTEM, "max_output_tokens": 16,
                                           "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                                               "turn_detection": None}}})  # fmt: skip
        assert (await conn.recv()).type == "session.updated"
        for data in chunks(samples, ms=100):
            await conn.input_audio_buffer.append(audio=base64.b64encode(data).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        text, usage = "", None
        while True:
            event = await asyncio.wait_for(conn.recv(), 60)
            if event.type == "response.output_text.delta":
                text += event.delta
            elif event.type == "response.done":
                usage = event.response.usage
                break
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        expected = await whole_clip(chat_pb2_grpc.ChatServiceStub(channel), samples, (("x-api-key", TEST_KEY),))
    assert text and usage.output_tokens > 0
    assert usage.input_tokens == expected[1]
