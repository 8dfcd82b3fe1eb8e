"""`museserve-loadtest capacity`: flags -> Assumptions -> plan -> a table (and JSON).

Every Assumptions field is a flag (`--field-name`, its help from the field); mixes are
`name=share,...`. `--from-run run.json --replicas R` takes the measurement from a load
generator report instead of `--goodput-rps-per-replica` / `--tokens-per-s-per-replica`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .capacity import Capacity, plan
from .capacity_assumptions import Assumptions, Measured

SECTIONS = {f.name: f.type for f in dataclasses.fields(Assumptions)}
MEASURED_FLAGS = ("goodput_rps_per_replica", "tokens_per_s_per_replica", "measured_prompt_tokens")


def _sections(a: Assumptions) -> dict[str, Any]:
    return {f.name: getattr(a, f.name) for f in dataclasses.fields(a)}


def parse_mix(text: str) -> dict[str, float]:
    """`instant=0.7,thinking=0.3` -> {"instant": 0.7, "thinking": 0.3}."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=share,..., got {text!r}")
    return mix


def add_capacity_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `capacity` subcommand; run_capacity handles its args."""
    p = subparsers.add_parser(
        "capacity",
        help="replicas, GPUs, nodes, cells, gateways and Redis shards for a user count",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--from-run", type=Path, help="load generator JSON report measured on --replicas model replicas")
    p.add_argument("--replicas", type=int, help="model replicas that served the --from-run run")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write assumptions and results as JSON here")
    defaults = Assumptions()
    for section, obj in _sections(defaults).items():
        group = p.add_argument_group(section)
        for f in dataclasses.fields(obj):
            if f.name == "source":
                continue
            default = getattr(obj, f.name)
            if isinstance(default, Mapping):
                kind, shown = parse_mix, ",".join(f"{k}={v:g}" for k, v in default.items())
            else:
                kind, shown = type(default), default
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=kind,
                default=argparse.SUPPRESS,
                help=f"{f.metadata['help']} (default: {shown})",
            )
    p.set_defaults(func=run_capacity)
    return p


def measured_from_run(report: Mapping, replicas: int, source: str = "run") -> Measured:
    """G = goodput.requests_per_s / replicas; tokens/s = G * (tokens.output_mean + tokens.reasoning_mean).

    The token means are over OK requests; they stand for the good ones (those within the SLO).
    """
    try:
        goodput = float(report["goodput"]["requests_per_s"])
        tokens = report["tokens"]
        decode = float(tokens["output_mean"]) + float(tokens.get("reasoning_mean") or 0.0)
        prompt = float(tokens["input_mean"])
        ok = int(report["requests"]["ok"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"from_run: {source} lacks a number at {e}") from None
    if replicas < 1:
        raise ValueError(f"replicas: must be >= 1, got {replicas}")
    if ok == 0 or goodput <= 0 or decode <= 0:
        raise ValueError(f"from_run: {source} has no request within its SLO ({ok} ok, goodput {goodput:g}/s)")
    slo = report.get("goodput", {}).get("slo") or report.get("config", {}).get("slo")
    per_replica = goodput / replicas
    total_tps = (report.get("throughput") or {}).get("output_tokens_per_s")
    note = f"{source}: {ok} OK requests on {replicas} replicas, SLO {json.dumps(slo)}"
    if total_tps is not None:
        note += f"; all OK requests' output tokens/s per replica {float(total_tps) / replicas:.1f}"
    return Measured(per_replica, per_replica * decode, prompt, note)


def assumptions_from_args(args: argparse.Namespace) -> Assumptions:
    """Defaults, overridden by the flags given; raises ValueError on a bad combination or value."""
    given = vars(args)
    sections = _sections(Assumptions())
    if given.get("from_run") is not None:
        clash = [f for f in MEASURED_FLAGS if f in given]
        if clash:
            raise ValueError(f"from_run: give either --from-run or --{clash[0].replace('_', '-')}, not both")
        if given.get("replicas") is None:
            raise ValueError("replicas: --from-run needs --replicas (model replicas that served the run)")
        report = json.loads(Path(given["from_run"]).read_text())
        sections["measured"] = measured_from_run(report, given["replicas"], str(given["from_run"]))
    elif any(f in given for f in MEASURED_FLAGS):
        sections["measured"] = dataclasses.replace(sections["measured"], source="flags")
    for name, obj in sections.items():
        changes = {f.name: given[f.name] for f in dataclasses.fields(obj) if f.name in given and f.name != "source"}
        sections[name] = dataclasses.replace(obj, **changes)
    assumptions = Assumptions(**sections)
    assumptions.validate()
    return assumptions


def _fmt(value: Any) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(a: Assumptions, c: Capacity) -> str:
    """Assumptions (value and help), then the results, then one row per pool class."""
    lines = ["ASSUMPTIONS"]
    for section, obj in _sections(a).items():
        for f in dataclasses.fields(obj):
            lines.append(f"  {section}.{f.name:<34} {_fmt(getattr(obj, f.name)):>24}  {f.metadata['help']}")
    lines.append("RESULTS (peak = average x peak_to_average; every tier sized at target_utilisation)")
    for key, value in c.to_json().items():
        if key != "pools":
            lines.append(f"  {key:<42} {_fmt(value):>24}")
    lines.append("POOLS at peak     req/s  decode tok/req  prefill tok/req  cost/req  replica-eq  replicas")
    for p in c.pools:
        lines.append(
            f"  {p.pool:<13} {_fmt(p.peak_requests_per_s):>9} {_fmt(p.decode_tokens_per_request):>15} "
            f"{_fmt(p.prefill_tokens_per_request):>16} {_fmt(p.cost_per_request):>9} "
            f"{_fmt(p.replica_equivalents):>11} {_fmt(p.replicas):>9}"
        )
    return "\n".join(lines)


def run_capacity(args: argparse.Namespace) -> int:
    """Prints the table; writes JSON with --json. A bad flag prints `capacity: field: why` and returns 2."""
    try:
        assumptions = assumptions_from_args(args)
        capacity = plan(assumptions)
    except (ValueError, OSError) as e:
        print(f"capacity: {e}", file=sys.stderr)
        return 2
    print(format_table(assumptions, capacity))
    if getattr(args, "json", None):
        doc = {"assumptions": dataclasses.asdict(assumptions), "capacity": capacity.to_json()}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
