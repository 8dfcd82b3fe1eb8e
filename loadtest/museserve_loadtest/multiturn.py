"""Multi-turn runs end to end: conversation starts drawn in advance, the run, the report.

The rate is of conversations started per second (Poisson, or gamma), not of requests:
the requests per second follow from the turns per conversation and how fast answers come.
For benchmarks, `run_conversations` (async) and `run_conversations_blocking` return every
turn's Sample; `summarize_conversations` turns them into a flat dict. Each call makes its
own transport and closes it, and keeps nothing between calls.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from .arrivals import schedule
from .conversation_loop import run_conversation_loop, run_conversations_in_new_loop
from .conversation_stats import conversations_section, summarize_conversations
from .conversations import ConversationPlan, plan_conversations
from .harness import REPORT_VERSION, Target, config_section
from .records import Sample
from .runner import RunConfig, RunResult
from .stats import summarize
from .workload import Workload, load_workload

__all__ = [
    "build_conversation_report",
    "execute_conversations",
    "format_conversation_summary",
    "plan_run",
    "run_conversations",
    "run_conversations_blocking",
    "summarize_conversations",
]


def plan_run(
    workload: Workload, config: RunConfig, keys: Mapping[str, str | None], salt: str = ""
) -> list[ConversationPlan]:
    """Starts at `config.rate` conversations per second over `config.duration_s`, at most
    `config.max_requests` conversations; the conversations themselves from `config.seed + 1`."""
    starts = schedule(config.rate, config.duration_s, config.max_requests, config.arrival, config.gamma_shape,
                      config.seed)  # fmt: skip
    return plan_conversations(workload, starts, keys, seed=config.seed + 1, salt=salt)


def _dispatch_end(plans: list[ConversationPlan], config: RunConfig) -> float:
    if config.max_requests is not None and len(plans) >= config.max_requests and plans:
        return plans[-1].start_s  # the count bound came first
    return config.duration_s


def build_conversation_report(
    result: RunResult, plans: list[ConversationPlan], target: Target, workload: Workload, slo: Mapping[str, float]
) -> dict:
    """The usual report keys over every turn (a turn is a request), `offered_rps` being the
    turns due per second, plus `conversations` (see conversation_stats.py)."""
    config = result.config
    dispatch_end = _dispatch_end(plans, config)
    summary = summarize(result.samples, slo, config.warmup_s, dispatch_end, result.wall_s)
    started = sum(1 for p in plans if config.warmup_s <= p.start_s < config.duration_s)
    measured = sum(1 for s in result.samples if not s.warmup)
    return {
        "version": REPORT_VERSION,
        "target": target.describe(),
        "workload": workload.model_dump(mode="json"),
        "config": {**config_section(config, slo), "rate_unit": "conversations per second"},
        "offered_rps": measured / summary["duration_s"],
        **summary,
        "conversations": conversations_section(
            result.samples, started, config.warmup_s, dispatch_end, summary["duration_s"]
        ),
    }


def execute_conversations(
    target: Target, workload: Workload, config: RunConfig, slo: Mapping[str, float], *,
    environ: Mapping[str, str] | None = None, default_key: str | None = None, quiet: bool = False,
) -> tuple[dict, RunResult]:  # fmt: skip
    """As `harness.execute`, for a workload with a `conversation` section."""
    keys = workload.keys(os.environ if environ is None else environ, default_key)
    plans = plan_run(workload, config, keys)
    result = run_conversations_in_new_loop(plans, target.transport_factory, config, quiet=quiet)
    return build_conversation_report(result, plans, target, workload, slo), result


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def format_conversation_summary(report: Mapping) -> str:
    """Lines for the terminal: the rates, the cached share and TTFT p50 by turn."""
    c = report["conversations"]
    share = "-" if c["cached_token_share"] is None else f"{c['cached_token_share']:.3f}"
    by_turn = "  ".join(f"{turn}:{_seconds(t['ttft_p50_s'])}" for turn, t in c["per_turn"].items())
    return (f"conversations {c['started']} ({c['started_per_s']:.2f}/s)  requests/s {c['requests_per_s']:.2f}  "
            f"cached share {share}\nttft p50 by turn (0-based)  {by_turn or '-'}")  # fmt: skip


def _resolve(
    target: Target | str, workload: Workload | str | Path, keys: Mapping[str, str | None] | str | None,
    transport: str,
) -> tuple[Target, Workload, dict[str, str | None]]:  # fmt: skip
    target = target if isinstance(target, Target) else Target(target, transport)
    workload = workload if isinstance(workload, Workload) else load_workload(workload)
    if workload.conversation is None:
        raise ValueError(f"workload {workload.name!r} has no conversation section")
    if keys is None:
        resolved = workload.keys(os.environ)
    elif isinstance(keys, str):
        resolved = {t.name: keys for t in workload.tenants}
    else:
        resolved = {t.name: keys.get(t.name) for t in workload.tenants}
    return target, workload, resolved


async def run_conversations(
    target: Target | str, workload: Workload | str | Path, rate: float, duration_s: float, seed: int = 0,
    keys: Mapping[str, str | None] | str | None = None, transport: str = "grpc", *,
    max_conversations: int | None = None, concurrency: int | None = None, warmup_s: float = 0.0,
    drain_timeout_s: float = 30.0, request_timeout_s: float | None = 60.0, salt: str = "",
) -> list[Sample]:  # fmt: skip
    """Runs `rate` new conversations per second (Poisson) for `duration_s`, then lets them
    finish for up to `drain_timeout_s`; returns one Sample per turn sent.

    `target`: a Target, or an address for `transport` ("grpc": host:port; "http": base URL).
    `workload`: a Workload, a YAML path or a shipped name ("multiturn"). `keys`: tenant name ->
    API key, one key for every tenant, or None to read each tenant's `key_env`. `salt` heads
    every system prompt: two runs against one server with the same seed send the same
    conversations, so give each its own salt to keep one run's prompts out of the other's cache."""
    target, workload, resolved = _resolve(target, workload, keys, transport)
    config = RunConfig(rate, duration_s, max_requests=max_conversations, concurrency=concurrency, warmup_s=warmup_s,
                       drain_timeout_s=drain_timeout_s, request_timeout_s=request_timeout_s, seed=seed)  # fmt: skip
    plans = plan_run(workload, config, resolved, salt)
    client = target.transport_factory()
    try:
        result = await run_conversation_loop(plans, client, config)
    finally:
        await client.close()
    return result.samples


def run_conversations_blocking(
    target: Target | str, workload: Workload | str | Path, rate: float, duration_s: float, seed: int = 0,
    keys: Mapping[str, str | None] | str | None = None, transport: str = "grpc", **options: float | int | str | None,
) -> list[Sample]:  # fmt: skip
    """`run_conversations` in a fresh event loop, for callers without one; `options` are its
    keyword-only arguments."""
    return asyncio.run(run_conversations(target, workload, rate, duration_s, seed, keys, transport, **options))  # type: ignore[arg-type]
