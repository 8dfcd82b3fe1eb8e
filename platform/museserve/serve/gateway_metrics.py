"""The gateway's decisions as Prometheus metrics, through Ray's metrics agent.

Names carry the `museserve_gateway_` prefix (Ray's exporter adds `ray_`). Labels stay
bounded: tiers and outcomes are config-sized; tenants are accounts, not users.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Histogram

MIRROR_LAG_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0]


class GatewayMetrics:
    """A `GatewayObserver` that exports; every method is cheap (no I/O)."""

    def __init__(self) -> None:
        self._decisions = Counter(
            "museserve_gateway_decisions_total",
            "Admission decisions by outcome: admitted, limited, shed, draining, unauthenticated, unavailable.",
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
        self._mirror_lag = Histogram(
            "museserve_gateway_mirror_lag_seconds",
            "From both answers in to the mirror record written.",
            MIRROR_LAG_BUCKETS,
        )

    def decision(self, outcome: str, tier: str) -> None:
        self._decisions.inc(1, {"outcome": outcome, "tier": tier})

    def tokens(self, tenant: str, kind: str, count: int) -> None:
        self._tokens.inc(count, {"tenant": tenant, "kind": kind})

    def mirror(self, outcome: str, lag_s: float | None) -> None:
        self._mirrors.inc(1, {"outcome": outcome})
        if lag_s is not None:
            self._mirror_lag.observe(lag_s)

    def redis_error(self, component: str) -> None:
        self._redis_errors.inc(1, {"component": component})

    def request(self, api: str, code: str) -> None:
        self._requests.inc(1, {"api": api, "code": code})
