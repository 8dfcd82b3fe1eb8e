"""The report's `voice` section on hand-made turns: latencies from the end of speech, errors
by code, warm-up, per turn, session start delays, and the terminal summary."""

from __future__ import annotations

import pytest

from museserve_loadtest.records import CANCELLED, Sample
from museserve_loadtest.voice_run import format_voice_summary
from museserve_loadtest.voice_stats import turn_latencies, voice_section


def _turn(
    index: int, session: int, turn: int, end_of_speech: float, status: str = "OK", first: float = 0.3,
    finish: float = 1.0, warmup: bool = False,
) -> Sample:  # fmt: skip
    """A turn whose speech ended at `end_of_speech`, first token `first` and finish `finish` later."""
    ok = status == "OK"
    return Sample(
        index, end_of_speech, warmup=warmup, sent=end_of_speech - 2.0, conversation=session, turn=turn,
        token_times=[end_of_speech + first, end_of_speech + first + 0.1] if ok else [],
        end=end_of_speech + (finish if ok else 0.5), status=status, input_tokens=80, output_tokens=12,
        speech_s=2.0, speech_ended=end_of_speech + 0.01, audio_tokens=50, end_detected=turn == 1,
    )  # fmt: skip


def _samples() -> list[Sample]:
    return [
        _turn(0, 0, 0, 3.0, first=0.2, finish=0.8),
        _turn(1, 0, 1, 7.0, first=0.4, finish=1.2),
        _turn(2, 1, 0, 4.0, first=0.3, finish=1.0),
        _turn(3, 1, 1, 9.0, status="UNAVAILABLE"),
        _turn(4, 2, 0, 5.0, status=CANCELLED),
        _turn(5, 3, 0, 1.5, first=9.0, finish=9.5, warmup=True),  # a session of the warm-up
    ]


def test_latencies_run_from_the_end_of_speech_over_ok_turns():
    latencies = turn_latencies(_samples()[:4])
    first = latencies["end_of_speech_to_first_token"]
    assert first["count"] == 3 and first["p50"] == pytest.approx(0.3) and first["mean"] == pytest.approx(0.3)
    assert first["p99"] == pytest.approx(0.398, abs=1e-3)
    assert latencies["end_of_speech_to_finish"]["p50"] == pytest.approx(1.0)
    assert latencies["end_of_speech_to_speech_ended"]["p90"] == pytest.approx(0.01)
    assert latencies["answer_stream"]["p50"] == pytest.approx(0.7)  # first token to finish


def test_the_voice_section_counts_turns_sessions_and_errors():
    section = voice_section(_samples(), {0: 0.9, 1: 1.5, 2: 2.5}, window_s=10.0)
    sessions, turns = section["sessions"], section["turns"]
    assert sessions["started"] == 3 and sessions["with_errors"] == 2  # session 1 failed, session 2 cancelled
    assert sessions["start_delay_s"]["p50"] == pytest.approx(0.5) and sessions["start_delay_s"]["count"] == 3
    assert turns == {"sent": 5, "ok": 3, "ok_per_s": 0.3, "errors_by_code": {"UNAVAILABLE": 1}, "cancelled": 1,
                     "ended_by_detection": 1}  # fmt: skip
    assert section["latency_s"]["end_of_speech_to_first_token"]["count"] == 3  # the warm-up turn left out
    assert section["speech_s"]["p50"] == 2.0 and section["tokens"]["audio_mean"] == 50
    assert section["per_turn"]["0"] == {"turns": 3, "ok": 2, "first_token_p50_s": pytest.approx(0.25),
                                        "first_token_p90_s": pytest.approx(0.29),
                                        "first_token_p99_s": pytest.approx(0.299)}  # fmt: skip
    assert section["per_turn"]["1"]["ok"] == 1


def test_an_empty_run_reports_nothing_measured():
    section = voice_section([], {}, window_s=0.0)
    assert section["turns"]["sent"] == 0 and section["latency_s"]["end_of_speech_to_first_token"]["p50"] is None
    assert section["tokens"]["output_mean"] is None and section["per_turn"] == {}


def test_the_terminal_summary_shows_the_percentiles_in_ms():
    report = {"voice": voice_section(_samples(), {0: 0.9, 1: 1.5, 2: 2.5}, window_s=10.0)}
    text = format_voice_summary(report)
    assert "voice sessions 3 (2 with errors)  turns ok 3/5" in text and "{'UNAVAILABLE': 1}" in text
    assert "end of speech -> first token  p50 300ms  p90 380ms  p99 398ms" in text
