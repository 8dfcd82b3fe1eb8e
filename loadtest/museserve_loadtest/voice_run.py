"""Voice runs end to end: session starts drawn in advance, the open-loop run, the report.

The rate is of sessions started per second (Poisson, or gamma), over gRPC only (Converse).
Sessions start at their planned times whatever happened to earlier ones; no session starts
at or after `duration_s`, and at `duration_s + drain_timeout_s` those still running are
cancelled. `--concurrency` caps the sessions open at once: a session waiting behind it starts
speaking late, which the report shows as `voice.sessions.start_delay_s`. Within a session the
turns follow each other as voice_session.py says; each turn is one request of the report.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial

from .arrivals import schedule
from .grpc_transport import GrpcTransport
from .harness import REPORT_VERSION, Target, config_section
from .progress import Progress
from .records import Sample
from .runner import RunConfig, RunResult, run_jobs
from .stats import summarize
from .voice_audio import UtteranceSource, corpus_files
from .voice_plan import VoiceSessionPlan, plan_sessions, voice_spec
from .voice_session import VoiceSession
from .voice_stats import voice_section
from .workload import Workload


def plan_run(
    workload: Workload, config: RunConfig, keys: Mapping[str, str | None], corpus_size: int = 0
) -> list[VoiceSessionPlan]:
    """Starts at `config.rate` sessions per second over `config.duration_s`, at most
    `config.max_requests` sessions; the sessions themselves from `config.seed + 1`."""
    starts = schedule(config.rate, config.duration_s, config.max_requests, config.arrival, config.gamma_shape,
                      config.seed)  # fmt: skip
    return plan_sessions(workload, starts, keys, seed=config.seed + 1, corpus_size=corpus_size)


async def run_voice_loop(
    plans: Sequence[VoiceSessionPlan], transport: GrpcTransport, config: RunConfig, source: UtteranceSource,
    progress: Progress | None = None,
) -> RunResult:  # fmt: skip
    """Samples come back in the order their turns started; `conversation` (the session) and
    `turn` say which is which. `config.rate` and `max_requests` are not read: `plans` fix the starts."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    def clock() -> float:
        return loop.time() - start

    cap = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    hard_stop = config.duration_s + config.drain_timeout_s
    samples: list[Sample] = []

    async def session(plan: VoiceSessionPlan) -> None:
        if cap is not None:
            await cap.acquire()
        try:
            voice = VoiceSession(plan, transport, source, clock, config.request_timeout_s)
            await voice.run(samples, config.warmup_s, hard_stop)
        finally:
            if cap is not None:
                cap.release()

    jobs = ((plan.start_s, partial(session, plan)) for plan in plans)
    return await run_jobs(jobs, samples, clock, config, progress)


def _dispatch_end(plans: Sequence[VoiceSessionPlan], config: RunConfig) -> float:
    if config.max_requests is not None and len(plans) >= config.max_requests and plans:
        return plans[-1].start_s  # the count bound came first
    return config.duration_s


def build_voice_report(
    result: RunResult, plans: Sequence[VoiceSessionPlan], target: Target, workload: Workload,
    slo: Mapping[str, float],
) -> dict:  # fmt: skip
    """The usual report keys over every turn (a turn is a request, timed from its end of
    speech: `latency_s.ttft` is end of speech -> first token), `offered_rps` being the turns
    sent per second, plus `voice` (see voice_stats.py)."""
    config = result.config
    dispatch_end = _dispatch_end(plans, config)
    summary = summarize(result.samples, slo, config.warmup_s, dispatch_end, result.wall_s)
    starts = {p.session: p.start_s for p in plans if config.warmup_s <= p.start_s < config.duration_s}
    measured = sum(1 for s in result.samples if not s.warmup)
    return {
        "version": REPORT_VERSION,
        "target": target.describe(),
        "workload": workload.model_dump(mode="json"),
        "config": {**config_section(config, slo), "rate_unit": "sessions per second"},
        "offered_rps": measured / summary["duration_s"],
        **summary,
        "voice": voice_section(result.samples, starts, summary["duration_s"]),
    }


def execute_voice(
    target: Target, workload: Workload, config: RunConfig, slo: Mapping[str, float], *,
    environ: Mapping[str, str] | None = None, default_key: str | None = None, quiet: bool = False,
) -> tuple[dict, RunResult]:  # fmt: skip
    """As `harness.execute`, for a workload with a `voice` section."""
    if target.transport != "grpc":
        raise ValueError(f"workload {workload.name!r} is spoken over Converse: it needs --transport grpc")
    spec = voice_spec(workload)
    corpus = corpus_files(spec.corpus) if spec.corpus is not None else []
    keys = workload.keys(os.environ if environ is None else environ, default_key)
    plans = plan_run(workload, config, keys, len(corpus))
    source = UtteranceSource(spec.sample_rate, corpus, spec.utterance_s.max)

    async def main() -> RunResult:
        transport = target.transport_factory()  # made inside the loop: gRPC aio channels bind to one
        assert isinstance(transport, GrpcTransport)
        try:
            return await run_voice_loop(plans, transport, config, source, None if quiet else Progress(sys.stderr))
        finally:
            await transport.close()

    result = asyncio.run(main())
    return build_voice_report(result, plans, target, workload, slo), result


def _ms(stats: Mapping[str, float | None]) -> str:
    return "  ".join(f"{q} {'-' if stats[q] is None else f'{stats[q] * 1000:.0f}ms'}" for q in ("p50", "p90", "p99"))


def format_voice_summary(report: Mapping) -> str:
    """Lines for the terminal: sessions and turns, and the latencies from the end of speech."""
    v = report["voice"]
    sessions, turns, latency = v["sessions"], v["turns"], v["latency_s"]
    return (f"voice sessions {sessions['started']} ({sessions['with_errors']} with errors)  turns ok "
            f"{turns['ok']}/{turns['sent']}  errors {turns['errors_by_code']}  cancelled {turns['cancelled']}\n"
            f"end of speech -> first token  {_ms(latency['end_of_speech_to_first_token'])}\n"
            f"end of speech -> finish       {_ms(latency['end_of_speech_to_finish'])}")  # fmt: skip
