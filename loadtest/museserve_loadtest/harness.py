"""One run end to end: schedule + requests drawn in advance, the open-loop run, the report dict."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from museserve.client import NO_RETRY, RetryPolicy

from .arrivals import schedule
from .grpc_transport import GrpcTransport
from .http_transport import HttpTransport
from .media import MediaCache
from .plan import plan_requests
from .records import Transport
from .runner import RunConfig, RunResult, run_blocking
from .stats import summarize
from .workload import Workload

REPORT_VERSION = 1


@dataclass(frozen=True)
class Target:
    """Where to send: `address` is host:port for gRPC, a base URL (http[s]://host:port) for HTTP."""

    address: str = "127.0.0.1:50051"
    transport: str = "grpc"  # grpc | http
    tls: bool = False
    ca_file: str | None = None
    metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    retry: RetryPolicy = NO_RETRY  # what is sent again after a failure before any output

    @property
    def host(self) -> str:
        if self.transport == "http":
            return urlparse(self.address).hostname or ""
        return self.address.rsplit(":", 1)[0].strip("[]")

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def transport_factory(self) -> Transport:
        if self.transport == "grpc":
            ca = Path(self.ca_file) if self.ca_file else None
            return GrpcTransport(self.address, tls=self.tls, ca_file=ca, metadata=self.metadata, retry=self.retry)
        if self.transport == "http":
            return HttpTransport(self.address, ca_file=self.ca_file, headers=self.metadata, retry=self.retry)
        raise ValueError(f"unknown transport {self.transport!r} (grpc or http)")

    def describe(self) -> dict:
        # Metadata values may hold secrets: the report keeps only their names.
        return {"address": self.address, "transport": self.transport, "tls": self.tls or self.transport == "http"
                and self.address.startswith("https"), "metadata_keys": [k for k, _ in self.metadata],
                "retry": asdict(self.retry)}  # fmt: skip


def config_section(config: RunConfig, slo: Mapping[str, float]) -> dict:
    """The report's `config` key."""
    return {
        "rate": config.rate,
        "arrival": config.arrival,
        "duration_s": config.duration_s,
        "concurrency": config.concurrency,
        "warmup_s": config.warmup_s,
        "slo": dict(slo),
        **{
            k: v
            for k, v in asdict(config).items()
            if k in ("gamma_shape", "max_requests", "seed", "drain_timeout_s", "request_timeout_s")
        },
    }


def build_report(result: RunResult, target: Target, workload: Workload, slo: Mapping[str, float]) -> dict:
    config = result.config
    measured = [s for s in result.samples if not s.warmup]
    dispatch_end = config.duration_s
    if config.max_requests is not None and len(result.samples) >= config.max_requests and result.samples:
        dispatch_end = result.samples[-1].scheduled  # the count bound came first
    summary = summarize(result.samples, slo, config.warmup_s, dispatch_end, result.wall_s)
    return {
        "version": REPORT_VERSION,
        "target": target.describe(),
        "workload": workload.model_dump(mode="json"),
        "config": config_section(config, slo),
        "offered_rps": len(measured) / max(dispatch_end - config.warmup_s, 1e-9),
        **summary,
    }


def execute(
    target: Target, workload: Workload, config: RunConfig, slo: Mapping[str, float], *,
    environ: Mapping[str, str] | None = None, default_key: str | None = None, quiet: bool = False,
) -> tuple[dict, RunResult]:  # fmt: skip
    """Schedules, plans, runs and summarises; returns the report (see the README for its keys)
    and the raw result (for plots)."""
    keys = workload.keys(os.environ if environ is None else environ, default_key)
    offsets = schedule(config.rate, config.duration_s, config.max_requests, config.arrival, config.gamma_shape,
                       config.seed)  # fmt: skip
    specs = plan_requests(workload, len(offsets), keys, seed=config.seed + 1, media=MediaCache())
    result = run_blocking(offsets, specs, target.transport_factory, config, quiet=quiet)
    return build_report(result, target, workload, slo), result


def raw_latencies(result: RunResult) -> dict[str, list[float]]:
    """Measured OK requests' latencies, by measure, for CDF plots."""
    ok = [s for s in result.samples if s.ok and not s.warmup]
    return {
        "ttft": [s.ttft for s in ok if s.ttft is not None],
        "itl": [gap for s in ok for gap in s.itls],
        "tpot": [s.tpot for s in ok if s.tpot is not None],
        "e2e": [s.e2e for s in ok if s.e2e is not None],
    }
