"""The gateway's decisions as Prometheus metrics, through Ray's metrics agent.

Names carry the `museserve_gateway_` prefix (Ray's exporter adds `ray_`). Labels stay
bounded: tiers and outcomes are config-sized; tenants are accounts, not users.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

QUEUE_ESTIMATE_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 60.0]
MIRROR_LAG_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0]


class GatewayMetrics:
    """A `GatewayObserver` that exports; every method is cheap (no I/O)."""

    def __init__(self) -> None:
        self._decisions = Counter(
            "museserve_gateway_decisions_total",
            "Admission decisions by outcome: admitted, limited, shed (hard cap), overloaded (estimated wait over "
            "the objective or deadline), draining, unauthenticated, unavailable.",
            ("outcome", "tier"),
        )
        self._tokens = Counter(
            "museserve_gateway_tenant_tokens_total",
            "Tokens charged to a tenant: prompt at admission, output when the stream ends.",
            ("tenant", "kind"),
        )
        self._mirrors = Counter(
            "museserve_gateway_mirror_total",
            "Mirrored requests by outcome: recorded, candidate_failed, skipped, record_failed.",
            ("outcome",),
        )
        self._redis_errors = Counter(
            "museserve_gateway_redis_errors_total",
            "Redis calls that failed or timed out, by component (ratelimit, mirror).",
            ("component",),
        )
        self._requests = Counter(
            "museserve_gateway_requests_total",
            "Chat requests by API (grpc, http) and final status: a gRPC code name (OK, INTERNAL, ...).",
            ("api", "code"),
        )
        self._degraded = Counter(
            "museserve_gateway_degraded_total",
            "Requests made cheaper under overload, by pool, tier and what was cut (mode, thinking_budget, agents).",
            ("model", "tier", "kind"),
        )
        self._queue_estimate = Histogram(
            "museserve_gateway_queue_estimate_seconds",
            "Estimated wait for a first token of each request at admission, from the pool's live state "
            "(admitted and refused; an unknown wait counts in +Inf).",
            QUEUE_ESTIMATE_BUCKETS,
            ("model",),
        )
        self._voice_turns = Counter(
            "museserve_voice_turns_total",
            "Turns of live voice sessions by pool and how they ended: answered, interrupted (barge-in or a "
            "cancel), unanswered, failed.",
            ("model", "end"),
        )
        self._voice_audio = Counter(
            "museserve_voice_audio_seconds_total", "Seconds of speech taken in by voice sessions.", ("model",)
        )
        self._mirror_lag = Histogram(
            "museserve_gateway_mirror_lag_seconds",
            "From both answers in to the mirror record written.",
            MIRROR_LAG_BUCKETS,
        )

    def decision(self, outcome: str, tier: str) -> None:
        self._decisions.inc(1, {"outcome": outcome, "tier": tier})

    def degraded(self, pool: str, tier: str, kind: str) -> None:
        self._degraded.inc(1, {"model": pool, "tier": tier, "kind": kind})

    def queue_estimate(self, pool: str, seconds: float) -> None:
        self._queue_estimate.observe(min(seconds, 3600.0), {"model": pool})  # inf: unknown

    def tokens(self, tenant: str, kind: str, count: int) -> None:
        self._tokens.inc(count, {"tenant": tenant, "kind": kind})

    def mirror(self, outcome: str, lag_s: float | None) -> None:
        self._mirrors.inc(1, {"outcome": outcome})
        if lag_s is not None:
            self._mirror_lag.observe(lag_s)

    def redis_error(self, component: str) -> None:
        self._redis_errors.inc(1, {"component": component})

    def voice_turn(self, pool: str, end: str, audio_seconds: float) -> None:
        self._voice_turns.inc(1, {"model": pool, "end": end})
        if audio_seconds > 0:
            self._voice_audio.inc(audio_seconds, {"model": pool})

    def request(self, api: str, code: str) -> None:
        self._requests.inc(1, {"api": api, "code": code})
