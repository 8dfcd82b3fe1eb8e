"""The `museserve-loadtest` command: run, sweep, compare, capacity.

Every subcommand sets `func` on its parser; `main` calls it and returns its exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from museserve.client import RetryPolicy

from .arrivals import ARRIVALS, gamma_shape_for_cv
from .capacity_report import add_capacity_parser
from .compare import compare_files
from .harness import Target, execute, raw_latencies
from .multiturn import execute_conversations, format_conversation_summary
from .runner import RunConfig
from .stats import parse_slo
from .sweep import find_knee, sweep_rates
from .voice_run import execute_voice, format_voice_summary
from .workload import WorkloadError, load_workload


class UsageError(Exception):
    pass


def _pairs(items: Sequence[str], flag: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        out.append((key.strip().lower(), value))
    return tuple(out)


# flag, RetryPolicy field, type, help
RETRY_FLAGS = (
    ("--max-attempts", "max_attempts", int, "attempts per request, the first included; 1: never retry"),
    ("--retry-backoff", "initial_backoff_s", float, "seconds of back-off before the second attempt"),
    ("--retry-max-backoff", "max_backoff_s", float, "the back-off grows no further"),
    ("--retry-multiplier", "multiplier", float, "growth of each back-off over the previous"),
    ("--retry-jitter", "jitter", float, "each back-off is drawn from [b * (1 - jitter), b]"),
)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload",
        required=True,
        type=Path,
        help="a workload YAML, or a shipped one by name (chat, long-context, multiturn, ...)",
    )
    p.add_argument("--target", default=None, help="gRPC host:port or HTTP base URL; default: loopback")
    p.add_argument("--transport", choices=("grpc", "http"), default="grpc")
    p.add_argument("--model", help="the model every request names, in place of the workload's `model`")
    p.add_argument("--tls", action="store_true", help="gRPC over TLS (system roots unless --ca-file)")
    p.add_argument("--ca-file", help="PEM root certificates for TLS")
    p.add_argument("--key-env", help="env var holding the API key for tenants without key_env")
    p.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="extra gRPC metadata/HTTP header"
    )
    p.add_argument("--allow-remote", action="store_true", help="required for a target that is not loopback")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--gamma-shape", type=float, help="gamma arrivals: shape k (CV = 1/sqrt(k))")
    shape.add_argument("--cv", type=float, help="gamma arrivals: coefficient of variation of the gaps")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of dispatch (warm-up included)")
    p.add_argument(
        "--max-requests",
        type=int,
        help="stop dispatching after this many (whichever bound first); conversations or sessions, for a "
        "multi-turn or voice workload",
    )
    p.add_argument(
        "--concurrency", type=int, help="cap on requests in flight (voice: sessions open); the rest wait, and it counts"
    )
    p.add_argument("--warmup", type=float, default=0.0, help="seconds at the start excluded from the stats")
    p.add_argument("--drain-timeout", type=float, default=30.0, help="after the duration; then cancel the rest")
    p.add_argument("--deadline", type=float, default=60.0, help="per-request deadline in seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo", action="append", default=[], metavar="KEY=SECONDS", help="ttft, itl, tpot or e2e")
    p.add_argument("--out", type=Path, default=Path("loadtest-report.json"), help="JSON report path")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots beside the report")
    p.add_argument("--quiet", action="store_true", help="no live progress line")
    retry = p.add_argument_group(
        "retries",
        "a request that fails with UNAVAILABLE (HTTP 503, a connection that failed) or CANCELLED before any "
        "output is sent again after an exponential back-off with jitter, or the server's RetryInfo / "
        "retry-after delay where longer, within its --deadline; the report counts them (requests.retries)",
    )
    policy = RetryPolicy()
    for flag, name, kind, what in RETRY_FLAGS:
        retry.add_argument(
            flag, dest=name, type=kind, default=getattr(policy, name), help=f"{what} (default %(default)s)"
        )


def _target(args: argparse.Namespace) -> Target:
    default = "127.0.0.1:50051" if args.transport == "grpc" else "http://127.0.0.1:8000"
    retry = RetryPolicy(**{name: getattr(args, name) for _, name, _, _ in RETRY_FLAGS})
    target = Target(args.target or default, args.transport, args.tls, args.ca_file, _pairs(args.metadata, "--metadata"),
                    retry)  # fmt: skip
    if not target.is_loopback() and not args.allow_remote:
        raise UsageError(f"{target.address} is not a loopback address: pass --allow-remote to load it")
    return target


def _config(args: argparse.Namespace, rate: float) -> RunConfig:
    shape = gamma_shape_for_cv(args.cv) if args.cv else (args.gamma_shape or 1.0)
    if args.arrival == "poisson" and (args.cv or args.gamma_shape):
        raise UsageError("--cv and --gamma-shape need --arrival gamma")
    if args.duration <= 0 or args.warmup < 0 or args.warmup >= args.duration:
        raise UsageError("need --duration > 0 and 0 <= --warmup < --duration")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be >= 1")
    return RunConfig(rate, args.duration, args.arrival, shape, args.max_requests, args.concurrency, args.warmup,
                     args.drain_timeout, args.deadline, args.seed)  # fmt: skip


def _one_run(args: argparse.Namespace, rate: float, plots_stem: Path | None) -> dict:
    import os

    default_key = os.environ.get(args.key_env) if args.key_env else None
    if args.key_env and not default_key:
        raise UsageError(f"--key-env {args.key_env}: the variable is not set")
    workload = load_workload(args.workload)
    if args.model is not None:
        workload = workload.model_copy(update={"model": args.model})
    run = execute_voice if workload.voice else execute_conversations if workload.conversation else execute
    report, result = run(_target(args), workload, _config(args, rate), parse_slo(args.slo),
                         default_key=default_key, quiet=args.quiet)  # fmt: skip
    if plots_stem is not None:
        from . import plots

        title = f"{args.workload.stem} at {rate:g} rps"
        plots.latency_cdfs(raw_latencies(result), plots_stem.with_name(plots_stem.name + "-latency.png"), title)
        plots.over_time(report["timeseries"], plots_stem.with_name(plots_stem.name + "-timeseries.png"), title)
    return report


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    report = _one_run(args, args.rate, None if args.no_plots else args.out.with_suffix(""))
    _write(args.out, report)
    r = report["requests"]
    ttft = report["latency_s"]["ttft"]["p50"]
    print(f"ok {r['ok']}/{r['scheduled']}  errors {r['errors_by_code']}  cancelled {r['cancelled']}  "
          f"retries {r['retries']} ({r['retried']} requests)  "
          f"ttft p50 {'-' if ttft is None else f'{ttft:.3f}s'}  goodput {report['goodput']['fraction']:.3f}")  # fmt: skip
    if "conversations" in report:
        print(format_conversation_summary(report))
    if "voice" in report:
        print(format_voice_summary(report))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    rates = sweep_rates(args.rates, args.start, args.stop, args.steps)
    stem = args.out.with_suffix("")
    runs = [_one_run(args, rate, None if args.no_plots else stem.with_name(f"{stem.name}-{rate:g}rps"))
            for rate in rates]  # fmt: skip
    knee = find_knee(runs, args.min_goodput, args.max_ttft_growth)
    _write(args.out, {"version": 1, "kind": "sweep", "rates": rates, "runs": runs, "knee": knee})
    if not args.no_plots:
        from . import plots

        plots.sweep_ttft(runs, stem.with_name(stem.name + "-sweep.png"), knee["offered_rps"])
    print(f"knee: {knee['rate']} rps (rule: {knee['rule']})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    print(compare_files(args.a, args.b))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="museserve-loadtest", description="Open-loop load generator for museserve.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one open-loop run at one rate")
    _add_run_options(run)
    run.add_argument(
        "--rate",
        type=float,
        required=True,
        help="target requests per second; new conversations (sessions) per second for a multi-turn (voice) workload",
    )
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="runs at increasing rates; finds the knee")
    _add_run_options(sweep)
    sweep.add_argument("--rates", help="comma-separated rates, e.g. 1,2,4,8 (conversations/s or sessions/s when "
                       "multi-turn or voice)")  # fmt: skip
    sweep.add_argument("--start", type=float)
    sweep.add_argument("--stop", type=float)
    sweep.add_argument("--steps", type=int)
    sweep.add_argument("--min-goodput", type=float, default=0.95, help="knee: least goodput fraction")
    sweep.add_argument("--max-ttft-growth", type=float, default=3.0, help="knee: most TTFT p99 / lowest rate's")
    sweep.set_defaults(func=cmd_sweep)
    compare = sub.add_parser("compare", help="deltas between two JSON reports")
    compare.add_argument("a", type=Path)
    compare.add_argument("b", type=Path)
    compare.set_defaults(func=cmd_compare)
    add_capacity_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, WorkloadError, ValueError, OSError) as e:
        print(f"museserve-loadtest {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
