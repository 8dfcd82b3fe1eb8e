"""`museserve talk`: PCM16 conversion, chunking and pacing, the turn record and its summary,
the sender's message order, and the command end to end against a fake Converse server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from museserve.cli import main
from museserve.talk import command
from museserve.talk.command import SpeechSender
from museserve.talk.speech import (
    END_OF_SPEECH,
    Pacer,
    audio_message,
    chunk_offsets,
    read_speech,
    split_chunks,
    start_message,
    to_pcm16,
)
from museserve.talk.turn import TurnRecord, summary_line
from museserve.v1 import chat_pb2 as pb
from tests.converse_fake import FakeConverse, serve_fake

RATE = 16_000


def _wav(path: Path, seconds: float = 0.3, rate: int = RATE, channels: int = 1) -> Path:
    t = np.arange(round(seconds * rate)) / rate
    tone = 0.4 * np.sin(2 * np.pi * 220 * t)
    sf.write(path, np.stack([tone] * channels, axis=1), rate, subtype="PCM_16")
    return path


def test_pcm16_is_little_endian_clipped_and_averages_channels():
    pcm = np.frombuffer(to_pcm16(np.array([0.0, 0.5, -1.0, 1.0, 2.0, -3.0])), dtype="<i2")
    assert pcm.tolist() == [0, 16384, -32768, 32767, 32767, -32768]
    stereo = np.array([[0.5, -0.5], [0.25, 0.75]])
    assert np.frombuffer(to_pcm16(stereo), dtype="<i2").tolist() == [0, 16384]


def test_a_pcm16_file_reads_back_bit_for_bit_and_stereo_is_mixed_down(tmp_path: Path):
    path = _wav(tmp_path / "mono.wav", rate=22_050)
    pcm, rate = read_speech(path)
    expected, _ = sf.read(path, dtype="int16")
    assert rate == 22_050 and pcm == expected.astype("<i2").tobytes()
    stereo, _ = read_speech(_wav(tmp_path / "stereo.wav", channels=2))
    assert stereo == read_speech(_wav(tmp_path / "mono16.wav"))[0]


def test_chunks_hold_whole_samples_and_their_offsets_count_samples():
    pcm = bytes(2 * 1000)
    chunks = split_chunks(pcm, RATE, 20)  # 320 samples each
    assert [len(c) for c in chunks] == [640, 640, 640, 80] and b"".join(chunks) == pcm
    assert chunk_offsets(chunks, RATE) == pytest.approx([0.0, 0.02, 0.04, 0.06])
    assert chunk_offsets(chunks[:2], RATE, start_s=1.0) == pytest.approx([1.0, 1.02])
    assert [len(c) for c in split_chunks(bytes(20), 8000, 0.01)] == [2] * 10  # at least one sample
    with pytest.raises(ValueError, match="whole 2-byte samples"):
        split_chunks(bytes(3), RATE, 20)


class FakeClock:
    """A monotonic clock that `sleep` advances, by `lag` more than asked (a late wake-up)."""

    def __init__(self, lag: float = 0.0):
        self.now, self.lag, self.sleeps = 100.0, lag, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.lag


def test_the_pacer_waits_for_fixed_points_so_late_wake_ups_do_not_add_up():
    clock = FakeClock(lag=0.005)
    pacer = Pacer(clock, clock.sleep)
    pacer.start()
    woke = []
    for offset in (0.0, 0.02, 0.04, 0.06):
        pacer.wait_until(offset)
        woke.append(clock.now - 100.0)
    assert clock.sleeps == pytest.approx([0.02, 0.015, 0.015])  # each wait absorbs the last lag
    assert woke == pytest.approx([0.0, 0.025, 0.045, 0.065])  # always one lag late, never more
    with pytest.raises(RuntimeError):
        Pacer(clock, clock.sleep).wait_until(0.0)


def _event(turn: int, **chat: object) -> pb.ConverseEvent:
    return pb.ConverseEvent(turn=turn, chat=pb.ChatEvent(**chat))  # type: ignore[arg-type]


def test_the_turn_record_times_everything_from_the_end_of_speech():
    record = TurnRecord(0, speech_end=10.0)
    ended = pb.SpeechEnded(audio_seconds=2.5, audio_tokens=62, detected=True)
    record.observe(pb.ConverseEvent(turn=0, speech_ended=ended), 10.05)
    record.observe(_event(0, reasoning_delta="hm"), 10.3)
    record.observe(_event(0, text_delta="hi"), 10.4)
    record.observe(_event(0, usage=pb.Usage(prompt_tokens=70, output_tokens=1, reasoning_tokens=1)), 10.5)
    assert not record.finished
    record.observe(_event(0, finish=pb.Finish(reason=pb.FINISH_REASON_STOP, model="m")), 10.6)
    assert record.finished and not record.cut_off
    assert (record.speech_ended_s, record.first_token_s, record.answer_s) == pytest.approx((0.05, 0.3, 0.6))
    line = summary_line(record, 2.5)
    for part in ("[m] turn 0", "2.50 s sent", "62 tokens heard", "detected by the server", "first token 0.300 s",
                 "-> finish 0.600 s", "prompt=70 reasoning=1 output=1", "finish=stop"):  # fmt: skip
        assert part in line, line
    assert TurnRecord(1).first_token_s is None


def test_the_sender_sends_start_speech_and_end_then_waits_for_the_answer():
    start = start_message(pb.ChatRequest(model="m"), RATE)
    speech = [b"\1\0" * 4, b"\2\0" * 4]
    sender = SpeechSender(start, speech, [], RATE, realtime=False)
    messages = sender.messages()
    assert [next(messages) for _ in range(4)] == [start, audio_message(speech[0]), audio_message(speech[1]),
                                                  END_OF_SPEECH]  # fmt: skip
    assert sender.speech_end is not None
    sender.answered.set()
    assert list(messages) == []


def test_with_server_detection_the_sender_stops_its_silence_once_the_end_is_heard():
    start = start_message(pb.ChatRequest(), RATE, vad_silence_ms=40)
    speech, tail = [b"\1\0" * 320], [bytes(640), bytes(640)]
    sender = SpeechSender(start, speech, tail, RATE, realtime=False)
    messages = sender.messages()
    assert [m.WhichOneof("message") for m in (next(messages), next(messages), next(messages))] == [
        "start", "audio", "audio"
    ]  # fmt: skip
    sender.speech_ended.set()  # heard after the first silent chunk: the second is never sent
    sender.answered.set()
    assert list(messages) == [] and not sender.fell_back


def test_without_a_detection_the_sender_falls_back_to_end_of_speech(monkeypatch):
    monkeypatch.setattr(command, "VAD_GRACE_S", 0.01)
    sender = SpeechSender(start_message(pb.ChatRequest(), RATE, 20), [b"\1\0"], [bytes(640)], RATE, realtime=False)
    sender.answered.set()
    kinds = [m.WhichOneof("message") for m in sender.messages()]
    assert kinds == ["start", "audio", "audio", "end_of_speech"] and sender.fell_back


async def _talk(service: FakeConverse, *argv: str) -> tuple[int, float]:
    server, address = await serve_fake(service)
    try:
        began = time.monotonic()
        rc = await asyncio.to_thread(main, ["talk", "--address", address, *argv])
        return rc, time.monotonic() - began
    finally:
        await server.stop(None)


async def test_talk_streams_the_file_and_prints_the_answer_and_a_summary(tmp_path: Path, capsys):
    path = _wav(tmp_path / "q.wav", seconds=0.25)
    service = FakeConverse(answer=("hel", "lo"), reasoning=("think",))
    rc, _ = await _talk(service, "--audio", str(path), "--model", "muse-tiny", "--mode", "thinking",
                        "--system", "be brief", "--max-tokens", "7", "--api-key", "sk-x", "--chunk-ms", "50")  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0 and out == "hello\n"
    assert "think" in err and "[fake-model] turn 0: audio 0.25 s sent" in err and "end: end_of_speech" in err
    start = service.starts[0]
    assert start.audio_format == pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE)
    assert not start.HasField("server_vad_silence_ms") and start.request.model == "muse-tiny"
    assert start.request.mode.mode == pb.MODE_THINKING and start.request.sampling.max_output_tokens == 7
    assert [m.content[0].text for m in start.request.messages] == ["be brief"]
    assert service.turn_audio == [read_speech(path)[0]] and len(service.chunk_times) == 5
    assert service.metadata[0]["x-api-key"] == "sk-x"


async def test_realtime_paces_the_chunks_at_the_speed_of_speech(tmp_path: Path, capsys):
    path = _wav(tmp_path / "q.wav", seconds=0.3)
    service = FakeConverse()
    rc, elapsed = await _talk(service, "--audio", str(path), "--realtime", "--chunk-ms", "50")
    assert rc == 0 and len(service.chunk_times) == 6
    assert elapsed >= 0.25  # the last chunk is due 0.25 s in: never sent early
    assert service.chunk_times[-1] - service.chunk_times[0] >= 0.2  # spread out as spoken, not a burst


async def test_with_vad_silence_the_server_detects_the_end(tmp_path: Path, capsys):
    path = _wav(tmp_path / "q.wav", seconds=0.2)
    service = FakeConverse()
    rc, _ = await _talk(service, "--audio", str(path), "--vad-silence-ms", "100")
    _, err = capsys.readouterr()
    assert rc == 0 and service.ends == ["detected"] and service.starts[0].server_vad_silence_ms == 100
    assert "end: detected by the server" in err and "end_of_speech sent" not in err


async def test_a_refused_session_exits_1_with_the_code_and_details(tmp_path: Path, capsys):
    service = FakeConverse(refuse=(grpc.StatusCode.INVALID_ARGUMENT, "sample rate 4000 is below 8000"))
    rc, _ = await _talk(service, "--audio", str(_wav(tmp_path / "q.wav")))
    _, err = capsys.readouterr()
    assert rc == 1 and "error: INVALID_ARGUMENT: sample rate 4000 is below 8000" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--audio", "missing.wav"], "no such file"),
        (["--chunk-ms", "0"], "--chunk-ms must be between"),
        (["--vad-silence-ms", "5"], "--vad-silence-ms must be between"),
    ],
)
def test_usage_errors_exit_2_before_any_call(tmp_path: Path, capsys, extra: list[str], message: str):
    argv = ["talk", "--address", "127.0.0.1:1", "--audio", str(_wav(tmp_path / "q.wav")), *extra]
    assert main(argv) == 2 and message in capsys.readouterr().err


def test_an_unreadable_file_exits_2(tmp_path: Path, capsys):
    path = tmp_path / "noise.wav"
    path.write_bytes(b"not a wav file")
    assert main(["talk", "--address", "127.0.0.1:1", "--audio", str(path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_unreachable_server_exits_1(tmp_path: Path, capsys):
    argv = ["talk", "--address", "127.0.0.1:1", "--audio", str(_wav(tmp_path / "q.wav")), "--timeout", "2"]
    assert main(argv) == 1 and "error: UNAVAILABLE" in capsys.readouterr().err
