"""Voice sessions against a fake Converse server on a loopback port: real-time pacing, the
turn timing from the end of speech, server end-of-speech detection, failures that end a
session, the hard stop, and `museserve-loadtest run` on a voice workload."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from museserve_loadtest.cli import main
from museserve_loadtest.grpc_transport import GrpcTransport
from museserve_loadtest.records import CANCELLED, Sample
from museserve_loadtest.runner import RunConfig
from museserve_loadtest.voice_audio import UtteranceSource, synthetic_speech
from museserve_loadtest.voice_plan import VoiceSessionPlan, plan_sessions
from museserve_loadtest.voice_run import run_voice_loop
from museserve_loadtest.voice_session import TURN_MISMATCH
from museserve_loadtest.workload import parse_workload
from tests.converse_fake import FakeConverse, serve_fake

RATE = 16_000
UTTERANCE_S = 0.3
THINK_S = 0.05


def _workload(**voice: object) -> dict:
    return {
        "name": "voice-test",
        "model": "muse-tiny",
        "output_tokens": {"dist": "fixed", "value": 4},
        "tenants": [{"name": "t", "key_env": "VOICE_TEST_KEY"}],
        "voice": {
            "turns": {"dist": "fixed", "value": 2},
            "utterance_s": {"min": UTTERANCE_S, "max": UTTERANCE_S},
            "think_time_s": {"min": THINK_S, "max": THINK_S},
            **voice,
        },
    }


def _plans(n: int = 1, **voice: object) -> list[VoiceSessionPlan]:
    workload = parse_workload(_workload(**voice))
    return plan_sessions(workload, [0.05 * i for i in range(n)], {"t": "sk-voice"}, seed=1)


class RecordingTransport(GrpcTransport):
    """Notes when each message of each call is written, on time.monotonic() (the loop's clock)."""

    def __init__(self, address: str):
        super().__init__(address)
        self.writes: list[tuple[float, str]] = []

    def converse(self, user: str, api_key: str | None):
        call = super().converse(user, api_key)
        write = call.write

        async def recorded(message):
            self.writes.append((time.monotonic(), message.WhichOneof("message")))
            await write(message)

        call.write = recorded
        return call


async def _run(
    service: FakeConverse, plans: list[VoiceSessionPlan], transport_class: type[GrpcTransport] = GrpcTransport,
    **config: float,
) -> tuple[list[Sample], GrpcTransport]:  # fmt: skip
    server, address = await serve_fake(service)
    transport = transport_class(address)
    settings = {"rate": 1.0, "duration_s": 1.0, "drain_timeout_s": 10.0, **config}
    try:
        result = await run_voice_loop(plans, transport, RunConfig(**settings), UtteranceSource(RATE))  # type: ignore[arg-type]
        return result.samples, transport
    finally:
        await transport.close()
        await server.stop(None)


async def test_turns_are_paced_as_spoken_and_timed_from_the_end_of_speech():
    plans = _plans()
    service = FakeConverse(delay_s=0.1)
    samples, transport = await _run(service, plans, RecordingTransport)
    assert [(s.turn, s.status) for s in samples] == [(0, "OK"), (1, "OK")]
    last_chunk_s = UTTERANCE_S - 0.02  # 15 chunks of 20 ms: the last is due 0.28 s in
    for s, turn in zip(samples, plans[0].turns, strict=True):
        assert s.scheduled == pytest.approx(s.sent + last_chunk_s)
        assert 0.1 <= s.ttft < 0.6 and s.e2e >= s.ttft and s.speech_s == pytest.approx(UTTERANCE_S)
        assert s.speech_ended is not None and s.audio_tokens > 0 and s.end_detected is False
        assert s.output_tokens == 2 and s.input_tokens > s.audio_tokens
        assert service.turn_audio[s.turn] == synthetic_speech(UTTERANCE_S, RATE, turn.audio_seed)
    assert samples[1].sent >= samples[0].end + THINK_S
    writes = np.array([t for t, kind in transport.writes if kind == "audio"][:15])  # turn 0's chunks
    lateness = (writes - writes[0]) - 0.02 * np.arange(15)
    assert lateness.min() > -1e-3 and np.median(lateness) < 0.05  # each at its due time, none early
    assert [kind for _, kind in transport.writes[16:18]] == ["end_of_speech", "audio"]
    assert service.ends == ["end_of_speech", "end_of_speech"] and service.sessions_closed == 1
    assert service.metadata[0]["authorization"] == "Bearer sk-voice"
    start = service.starts[0]
    assert start.audio_format.sample_rate_hz == RATE and start.request.model == "muse-tiny"
    assert start.request.sampling.max_output_tokens == 4 and not start.HasField("server_vad_silence_ms")


async def test_without_realtime_each_utterance_goes_at_once():
    service = FakeConverse()
    samples, transport = await _run(service, _plans(realtime=False), RecordingTransport)
    assert [s.status for s in samples] == ["OK", "OK"]
    writes = [t for t, kind in transport.writes if kind == "audio"]
    assert writes[14] - writes[0] < 0.15
    assert all(s.scheduled - s.sent < 0.15 for s in samples)  # the end of speech is when the last chunk went


async def test_server_detection_ends_turns_and_its_wait_counts():
    service = FakeConverse()
    samples, _ = await _run(service, _plans(server_vad_silence_ms=300))
    assert [s.status for s in samples] == ["OK", "OK"] and service.ends == ["detected", "detected"]
    assert all(s.end_detected for s in samples) and service.starts[0].server_vad_silence_ms == 300
    assert all(s.ttft >= 0.28 for s in samples)  # the silence the server waited for, spoken in real time


async def test_a_refused_session_records_its_code_on_its_first_turn():
    service = FakeConverse(refuse=(grpc.StatusCode.UNAUTHENTICATED, "unknown API key"))
    samples, _ = await _run(service, _plans())
    assert [(s.turn, s.status, s.error) for s in samples] == [(0, "UNAUTHENTICATED", "unknown API key")]


async def test_a_failed_turn_ends_its_session():
    samples, _ = await _run(FakeConverse(fail_on_turn=1), _plans(2))
    by_session = {(s.conversation, s.turn): s.status for s in samples}
    assert by_session == {(0, 0): "OK", (0, 1): "UNAVAILABLE", (1, 0): "OK", (1, 1): "UNAVAILABLE"}


async def test_an_answer_past_the_deadline_fails_the_turn():
    samples, _ = await _run(FakeConverse(delay_s=2.0), _plans(), request_timeout_s=0.2)
    assert [(s.turn, s.status) for s in samples] == [(0, "DEADLINE_EXCEEDED")]
    assert 0.19 <= samples[0].end - samples[0].scheduled < 1.5


class ShiftedTurns(FakeConverse):
    """Numbers every answer's turn one higher, as a server that split an utterance would."""

    def _answer(self, turn, speech, rate, detected):
        events = super()._answer(turn, speech, rate, detected)
        for event in events:
            event.turn += 1
        return events


async def test_events_of_another_turn_fail_the_turn():
    samples, _ = await _run(ShiftedTurns(), _plans())
    assert [(s.turn, s.status) for s in samples] == [(0, TURN_MISMATCH)]


async def test_the_hard_stop_cancels_the_turn_in_progress():
    samples, _ = await _run(FakeConverse(delay_s=5.0), _plans(), duration_s=0.5, drain_timeout_s=0.5)
    assert [(s.turn, s.status) for s in samples] == [(0, CANCELLED)] and samples[0].end is not None


async def test_the_cli_runs_a_voice_workload_and_reports_end_of_speech_latencies(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("VOICE_TEST_KEY", "sk-voice")
    service = FakeConverse(delay_s=0.05)
    server, address = await serve_fake(service)
    workload, out = tmp_path / "voice.yaml", tmp_path / "report.json"
    workload.write_text(yaml.safe_dump(_workload(realtime=False)))
    argv = ["run", "--workload", str(workload), "--target", address, "--rate", "8", "--duration", "1",
            "--max-requests", "2", "--drain-timeout", "10", "--seed", "2", "--slo", "ttft=5", "--out", str(out),
            "--quiet", "--no-plots"]  # fmt: skip
    try:
        assert await asyncio.to_thread(main, argv) == 0
        http = ["--transport", "http", "--target", "http://127.0.0.1:1"]
        assert await asyncio.to_thread(main, [*argv[:3], *http, *argv[5:]]) == 2
    finally:
        await server.stop(None)
    report = json.loads(out.read_text())
    voice, requests = report["voice"], report["requests"]
    assert report["config"]["rate_unit"] == "sessions per second"
    assert voice["sessions"]["started"] == 2 and voice["sessions"]["with_errors"] == 0
    assert voice["turns"]["ok"] == voice["turns"]["sent"] == requests["ok"] == 4
    first_token = voice["latency_s"]["end_of_speech_to_first_token"]
    assert first_token["count"] == 4 and 0.05 <= first_token["p50"] <= first_token["p99"] < 1.0
    assert report["latency_s"]["ttft"]["p50"] == pytest.approx(first_token["p50"])
    assert set(voice["per_turn"]) == {"0", "1"} and report["goodput"]["fraction"] == 1.0
    out_text, err = capsys.readouterr()
    assert "end of speech -> first token  p50" in out_text and "needs --transport grpc" in err
