"""The Converse clients against the real session app (muse-tiny, the default model there):
`museserve talk` on a spoken file, and `museserve-loadtest run` on a small voice workload.
They need the server side of Converse (`ChatService.Converse`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from museserve.cli import main as museserve_main
from museserve_loadtest.cli import main as loadtest_main
from museserve_loadtest.voice_audio import synthetic_speech

from .conftest import TEST_KEY

pytestmark = pytest.mark.integration

RATE = 16_000


def _speech_file(path: Path, seconds: float = 1.5, seed: int = 0) -> Path:
    samples = np.frombuffer(synthetic_speech(seconds, RATE, seed), dtype="<i2")
    sf.write(path, samples, RATE, subtype="PCM_16")
    return path


def _talk(grpc_address: str, audio: Path, *extra: str) -> int:
    argv = ["talk", "--address", grpc_address, "--audio", str(audio), "--model", "muse-tiny", "--max-tokens", "6",
            "--temperature", "0", "--api-key", TEST_KEY, "--timeout", "60", *extra]  # fmt: skip
    return museserve_main(argv)


def test_talk_answers_speech_and_times_it_from_the_end_of_speech(grpc_address: str, tmp_path: Path, capsys):
    assert _talk(grpc_address, _speech_file(tmp_path / "q.wav")) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "[muse-tiny] turn 0: audio 1.50 s sent" in summary and "end: end_of_speech" in summary
    assert re.search(r"end of speech -> first token \d+\.\d{3} s, -> finish \d+\.\d{3} s", summary), summary
    assert re.search(r"tokens prompt=[1-9]\d* ", summary), summary


def test_talk_in_real_time_with_server_end_of_speech_detection(grpc_address: str, tmp_path: Path, capsys):
    audio = _speech_file(tmp_path / "q.wav", seconds=1.0, seed=1)
    assert _talk(grpc_address, audio, "--realtime", "--vad-silence-ms", "400") == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "end: detected by the server" in summary


def test_talk_reports_a_refusal_with_its_code(grpc_address: str, tmp_path: Path, capsys):
    argv = ["talk", "--address", grpc_address, "--audio", str(_speech_file(tmp_path / "q.wav")),
            "--api-key", "sk-not-a-key"]  # fmt: skip
    assert museserve_main(argv) == 1
    assert "error: UNAUTHENTICATED" in capsys.readouterr().err


VOICE = {
    "name": "live-voice",
    "model": "muse-tiny",
    "temperature": 0,
    "output_tokens": {"dist": "fixed", "value": 4},
    "tenants": [{"name": "tester", "key_env": "LOADTEST_LIVE_KEY"}],
    "voice": {
        "turns": {"dist": "fixed", "value": 2},
        "utterance_s": {"min": 0.5, "max": 1.5},
        "think_time_s": {"min": 0.05, "max": 0.2},
        "system_prompt_words": {"dist": "fixed", "value": 8},
    },
}


def test_a_voice_workload_runs_every_turn_without_an_error(grpc_address: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LOADTEST_LIVE_KEY", TEST_KEY)
    workload, out = tmp_path / "voice.yaml", tmp_path / "voice.json"
    workload.write_text(yaml.safe_dump(VOICE))
    argv = ["run", "--workload", str(workload), "--target", grpc_address, "--rate", "4", "--duration", "5",
            "--max-requests", "2", "--drain-timeout", "30", "--deadline", "30", "--seed", "4", "--out", str(out),
            "--quiet", "--no-plots"]  # fmt: skip
    assert loadtest_main(argv) == 0
    report = json.loads(out.read_text())
    voice = report["voice"]
    assert voice["sessions"]["started"] == 2 and voice["sessions"]["with_errors"] == 0
    assert voice["turns"]["ok"] == voice["turns"]["sent"] == 4 and voice["turns"]["errors_by_code"] == {}
    first_token = voice["latency_s"]["end_of_speech_to_first_token"]
    assert first_token["count"] == 4 and 0 < first_token["p50"] <= first_token["p99"]
    assert voice["tokens"]["audio_mean"] > 0 and voice["tokens"]["output_mean"] > 0
