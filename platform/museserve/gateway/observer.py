"""What the gateway reports about its decisions, as a small protocol: the Serve deployment
exports it to Prometheus (`serve/gateway_metrics.py`); tests and tools count in memory."""

from __future__ import annotations

from collections import Counter
from typing import Protocol


class GatewayObserver(Protocol):
    def decision(self, outcome: str, tier: str) -> None:
        """outcome: admitted, limited, shed (the hard cap), overloaded (the pool's estimated wait
        exceeds the objective or the deadline), draining, unauthenticated or unavailable."""

    def degraded(self, pool: str, tier: str, kind: str) -> None:
        """A request made cheaper under overload; kind: what was cut (e.g. mode, thinking_budget)."""

    def queue_estimate(self, pool: str, seconds: float) -> None:
        """The estimated wait for a first token of a request at its admission (inf: unknown)."""

    def tokens(self, tenant: str, kind: str, count: int) -> None:
        """kind: prompt (charged at admission) or output (settled when the stream ends)."""

    def redis_error(self, component: str) -> None:
        """A Redis call that failed (component: ratelimit, mirror)."""

    def mirror(self, outcome: str, lag_s: float | None) -> None:
        """outcome: recorded, candidate_failed, skipped, skipped_scaled_to_zero (the candidate has
        no replica) or record_failed; lag from the later of the two answers to the record written."""

    def voice_turn(self, pool: str, end: str, audio_seconds: float) -> None:
        """A voice session's turn ended (end: answered, interrupted by new speech or a cancel,
        unanswered, failed) after `audio_seconds` of speech."""

    def request(self, api: str, code: str) -> None:
        """A chat request ended at the API edge (api: grpc or http) with this final status:
        a gRPC code name (OK, INVALID_ARGUMENT, ..., CANCELLED when the caller went away)."""


class CountingObserver:
    """Counts in memory: decisions by (outcome, tier), tokens by (tenant, kind), mirrors by
    outcome, requests by (api, code)."""

    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.token_counts: Counter[tuple[str, str]] = Counter()
        self.mirrors: Counter[str] = Counter()
        self.mirror_lags: list[float] = []
        self.redis_errors: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()  # by (api, code)
        self.degradations: Counter[tuple[str, str, str]] = Counter()  # by (pool, tier, kind)
        self.queue_estimates: list[tuple[str, float]] = []
        self.voice_turns: Counter[tuple[str, str]] = Counter()  # by (pool, end)
        self.voice_audio_seconds = 0.0

    def redis_error(self, component: str) -> None:
        self.redis_errors[component] += 1

    def decision(self, outcome: str, tier: str) -> None:
        self.decisions[outcome, tier] += 1

    def degraded(self, pool: str, tier: str, kind: str) -> None:
        self.degradations[pool, tier, kind] += 1

    def queue_estimate(self, pool: str, seconds: float) -> None:
        self.queue_estimates.append((pool, seconds))

    def tokens(self, tenant: str, kind: str, count: int) -> None:
        self.token_counts[tenant, kind] += count

    def mirror(self, outcome: str, lag_s: float | None) -> None:
        self.mirrors[outcome] += 1
        if lag_s is not None:
            self.mirror_lags.append(lag_s)

    def voice_turn(self, pool: str, end: str, audio_seconds: float) -> None:
        self.voice_turns[pool, end] += 1
        self.voice_audio_seconds += audio_seconds

    def request(self, api: str, code: str) -> None:
        self.requests[api, code] += 1
