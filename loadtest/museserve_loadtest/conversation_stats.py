"""Summaries of a multi-turn run: per turn, the cached-token share, and a flat dict for benchmarks.

Rules (they define the numbers):
- Turns are 0-based: turn 0 carries the system prompt and the first user turn.
- Only measured turns count: those of conversations that started at or after the warm-up.
- TTFT percentiles are over OK turns, each measured from the turn's due time.
- The cached-token share is sum(cached prompt tokens) / sum(prompt tokens) over OK turns
  (the usage event comes with the answer); None when no prompt tokens were counted.
- `errors` are turns the server answered with an error status; `cancelled` turns were cut
  by the hard stop. Neither counts as OK.
- Throughput divides by the window from `warmup_s` to the last measured completion.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from .records import Sample
from .stats import percentiles


def _measured(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if not s.warmup and s.turn is not None]


def cached_token_share(samples: Sequence[Sample]) -> float | None:
    ok = [s for s in samples if s.ok]
    prompt = sum(s.input_tokens for s in ok)
    return sum(s.cached_tokens for s in ok) / prompt if prompt else None


def _turn_summary(samples: Sequence[Sample]) -> dict:
    ok = [s for s in samples if s.ok]
    ttft = percentiles([s.ttft for s in ok if s.ttft is not None])
    return {
        "requests": len(samples),
        "ok": len(ok),
        "ttft_p50_s": ttft["p50"],
        "ttft_p90_s": ttft["p90"],
        "cached_token_share": cached_token_share(ok),
        "input_tokens_mean": sum(s.input_tokens for s in ok) / len(ok) if ok else None,
    }


def per_turn(samples: Sequence[Sample]) -> dict[int, dict]:
    """Turn index -> requests, ok, TTFT p50/p90 (s), cached-token share, mean prompt tokens."""
    by_turn: dict[int, list[Sample]] = defaultdict(list)
    for s in _measured(samples):
        by_turn[s.turn].append(s)  # type: ignore[index]  # _measured keeps only turns with an index
    return {turn: _turn_summary(by_turn[turn]) for turn in sorted(by_turn)}


def summarize_conversations(samples: Sequence[Sample], warmup_s: float = 0.0) -> dict:
    """The flat summary of a multi-turn run (see the module rules); `warmup_s` as the run's."""
    measured = _measured(samples)
    ok = [s for s in measured if s.ok]
    cancelled = [s for s in measured if s.cancelled]
    errors = [s for s in measured if s.status is not None and not s.ok and not s.cancelled]
    last_end = max((s.end for s in measured if s.end is not None), default=warmup_s)
    window = max(last_end - warmup_s, 1e-9)
    ttft = percentiles([s.ttft for s in ok if s.ttft is not None])
    return {
        "conversations": len({s.conversation for s in measured}),
        "requests": len(measured),
        "ok": len(ok),
        "errors": len(errors),
        "errors_by_code": dict(sorted(Counter(s.status for s in errors).items())),
        "cancelled": len(cancelled),
        "throughput_rps": (len(ok) + len(errors)) / window,
        "ok_rps": len(ok) / window,
        "ttft_p50_s": ttft["p50"],
        "ttft_p90_s": ttft["p90"],
        "cached_token_share": cached_token_share(ok),
        "per_turn": per_turn(measured),
    }


def conversations_section(
    samples: Sequence[Sample], started: int, warmup_s: float, dispatch_end_s: float, window_s: float
) -> dict:
    """The report's `conversations` key. `started`: measured conversations started; they
    started over [warmup_s, dispatch_end_s], and the turns ran over `window_s` seconds."""
    measured = _measured(samples)
    completed = [s for s in measured if s.status is not None and not s.cancelled]
    return {
        "rate_unit": "conversations per second",
        "started": started,
        "started_per_s": started / max(dispatch_end_s - warmup_s, 1e-9),
        "turns_sent_mean": len(measured) / started if started else None,
        "requests_per_s": len(completed) / max(window_s, 1e-9),
        "cached_token_share": cached_token_share(measured),
        # JSON object keys are strings: "0" is the first turn.
        "per_turn": {str(turn): summary for turn, summary in per_turn(measured).items()},
    }
