"""The report's `voice` section: what each spoken turn waited for, from its end of speech.

Rules (they define the numbers):
- Turns are 0-based; only measured turns count: those of sessions that started at or after
  the warm-up.
- Latencies are over OK turns and run from the turn's end of speech (voice_session.py):
  `end_of_speech_to_first_token` (the first reasoning or text token: the wait a speaker
  notices), `end_of_speech_to_finish` (the whole answer), `end_of_speech_to_speech_ended`
  (until the server reported the end), and `answer_stream` (first token to finish).
- `start_delay_s`: per measured session, how late its first chunk went out after its planned
  start (making the speech, a client that falls behind, the wait behind --concurrency); it
  is not in the latencies above.
- `errors_by_code`: turns that failed with a status from the server or the client's own
  checks (DEADLINE_EXCEEDED, TURN_MISMATCH, ...); `cancelled` turns were cut by the hard stop.
  A session with either has `with_errors`.
- `ended_by_detection`: OK turns the server's end-of-speech detection ended.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from .records import Sample
from .stats import percentiles


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _answer_stream_s(sample: Sample) -> float | None:
    if not sample.token_times or sample.end is None:
        return None
    return sample.end - sample.token_times[0]


def _speech_ended_s(sample: Sample) -> float | None:
    return None if sample.speech_ended is None else sample.speech_ended - sample.scheduled


def _present(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def turn_latencies(samples: Sequence[Sample]) -> dict[str, dict]:
    """p50/p90/p99/mean/count of each latency (see the module rules) over the OK ones of `samples`."""
    ok = [s for s in samples if s.ok]
    return {
        "end_of_speech_to_first_token": percentiles(_present([s.ttft for s in ok])),
        "end_of_speech_to_finish": percentiles(_present([s.e2e for s in ok])),
        "end_of_speech_to_speech_ended": percentiles(_present([_speech_ended_s(s) for s in ok])),
        "answer_stream": percentiles(_present([_answer_stream_s(s) for s in ok])),
    }


def _per_turn(samples: Sequence[Sample]) -> dict[str, dict]:
    by_turn: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_turn[s.turn].append(s)  # type: ignore[index]  # measured samples all have a turn
    out = {}
    for turn in sorted(by_turn):
        ok = [s for s in by_turn[turn] if s.ok]
        first = percentiles(_present([s.ttft for s in ok]))
        # JSON object keys are strings: "0" is the first turn.
        out[str(turn)] = {"turns": len(by_turn[turn]), "ok": len(ok), "first_token_p50_s": first["p50"],
                          "first_token_p90_s": first["p90"], "first_token_p99_s": first["p99"]}  # fmt: skip
    return out


def voice_section(samples: Sequence[Sample], starts: Mapping[int, float], window_s: float) -> dict:
    """`starts`: each measured session's planned start (session -> seconds), those that
    started; `window_s`: the seconds the measured turns ran over."""
    measured = [s for s in samples if not s.warmup and s.turn is not None]
    ok = [s for s in measured if s.ok]
    cancelled = [s for s in measured if s.cancelled]
    errors = [s for s in measured if s.status is not None and not s.ok and not s.cancelled]
    first_chunks = {s.conversation: s.sent for s in measured if s.turn == 0 and s.sent is not None}
    delays = [first_chunks[c] - start for c, start in starts.items() if c in first_chunks]
    return {
        "rate_unit": "sessions per second",
        "sessions": {
            "started": len(starts),
            "with_errors": len({s.conversation for s in errors + cancelled}),
            "start_delay_s": percentiles(delays),
        },
        "turns": {
            "sent": len(measured),
            "ok": len(ok),
            "ok_per_s": len(ok) / max(window_s, 1e-9),
            "errors_by_code": dict(sorted(Counter(s.status for s in errors).items())),
            "cancelled": len(cancelled),
            "ended_by_detection": sum(1 for s in ok if s.end_detected),
        },
        "latency_s": turn_latencies(measured),
        "speech_s": percentiles(_present([s.speech_s for s in measured])),
        "tokens": {
            "audio_mean": _mean([s.audio_tokens for s in ok]),
            "prompt_mean": _mean([s.input_tokens for s in ok]),
            "output_mean": _mean([s.output_tokens for s in ok]),
            "reasoning_mean": _mean([s.reasoning_tokens for s in ok]),
        },
        "per_turn": _per_turn(measured),
    }
