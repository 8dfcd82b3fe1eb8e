"""`museserve-loadtest capacity`: files and stated assumptions -> figures -> plan -> text and JSON.

Measured figures come from the files given (`--engine`, `--sweep`, `--prefix-routing`,
`--answers`, `--gateway`); every other figure is assumed, with its reason, in a `--profile` YAML
(`name: {value, reason}`) or by `--assume NAME=VALUE:REASON`. A measurement wins over the
profile unless the profile's entry says `replaces_measured: true`; `--assume` always wins.
The report says what an assumption replaced. A figure the plan needs that is in none of
them is an error naming it: nothing has a default.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from museserve.model.config import MuseConfig

from . import capacity_sources as sources
from .capacity import CapacityPlan, plan
from .capacity_figures import Figure, Figures, load_profile, merge, parse_assume
from .capacity_layout import GIB, Layout, architecture, suggest_layout


def add_capacity_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The `capacity` subcommand; run_capacity handles its args."""
    p = subparsers.add_parser(
        "capacity",
        help="replicas, GPUs, cells, gateways, Redis shards and mirror bandwidth for a user count",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--profile", type=Path, help="YAML of assumed figures: name: {value: ..., reason: ...}")
    p.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE:REASON",
                   help="an assumed figure with its reason; a mix as a/0.7+b/0.3; repeatable")  # fmt: skip
    p.add_argument("--engine", type=Path, help=".bench/engine.json: decode tokens/s, step time, prefill rate")
    p.add_argument("--sweep", type=Path, help="a sweep report: decode tokens/s per replica at the knee")
    p.add_argument("--sweep-replicas", type=int, help="model replicas that served the --sweep runs")
    p.add_argument("--prefix-routing", type=Path, help=".bench/prefix_routing.json: the prefix hit rate")
    p.add_argument("--answers", type=Path, help=".bench/answers.json: prefill shared by contemplating agents")
    p.add_argument("--gateway", type=Path, help=".bench/gateway.json: Redis decisions per request, keys each")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write figures, layouts and the plan as JSON")
    p.set_defaults(func=run_capacity)
    return p


def figures_from_args(args: argparse.Namespace) -> Figures:
    """Measurements in order engine, sweep (its knee, at the SLO, wins), prefix routing, answers, gateway;
    then the profile's assumptions, then --assume's (see `capacity_figures.merge`)."""
    found: list[Figure] = []
    if args.engine:
        found += sources.from_engine(args.engine)
    if args.sweep:
        if args.sweep_replicas is None:
            raise ValueError("sweep_replicas: --sweep needs --sweep-replicas (model replicas that served it)")
        found += sources.from_sweep(args.sweep, args.sweep_replicas)
    if args.prefix_routing:
        found += sources.from_prefix_routing(args.prefix_routing)
    if args.answers:
        found += sources.from_answers(args.answers)
    if args.gateway:
        found += sources.from_gateway(args.gateway)
    profile = load_profile(args.profile) if args.profile else []
    return merge(found, profile, [parse_assume(text) for text in args.assume])


def layouts(f: Figures) -> list[Layout]:
    """The suggested TP x PP of every named model size on the plan's GPUs."""
    usable = f.number("gpu_memory_gib") * GIB * f.number("gpu_memory_utilisation")
    weight, vocab = f.number("weight_bytes_per_parameter"), int(f.number("vocab_size"))
    return [suggest_layout(architecture(s, vocab), s, weight, usable) for s in MuseConfig.named_sizes()]


def _fmt(value: Any) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{int(value):,}"


def format_text(figures: Figures, lays: list[Layout], c: CapacityPlan) -> str:
    lines = ["FIGURES (measured: file and key; assumed: the reason)"]
    for f in figures.used.values():
        extra = f"; replaces {f.replaces}" if f.replaces else ""
        lines.append(f"  {f.name:<34} {_fmt(f.value):>28}  {f.kind:<8}  {f.source}{extra}")
    lines.append("LAYOUT per model size (smallest TP, then PP, whose weights take <= half the usable memory)")
    for lay in lays:
        lines.append(f"  {lay.model_size:<6} {lay.parameters / 1e9:8.2f} B params {lay.weight_gib:8.1f} GiB weights  "
                     f"TP {lay.tensor_parallel} x PP {lay.pipeline_parallel} = {lay.gpus} GPUs")  # fmt: skip
    r, m = c.replica, c.replica.memory
    lines += [
        "REPLICA",
        f"  GPUs {m.gpus}; weights {m.weight_bytes / GIB:,.1f} GiB; KV cache {m.kv_bytes / GIB:,.1f} GiB "
        f"at {m.kv_bytes_per_token:,} bytes/token",
        f"  mean context {_fmt(m.mean_context_tokens)} tokens = {m.kv_bytes_per_sequence / GIB:.3f} GiB each: "
        f"{m.kv_sequences:,} sequences fit; compute runs {r.compute_sequences:,.1f} per step -> {r.bound}-bound",
        f"  decode {_fmt(r.decode_tokens_per_s)} tokens/s, prefill {_fmt(r.prefill_tokens_per_s)} tokens/s",
        "POOLS at peak        req/s  prefill tok/req  decode tok/req  replica-s/req  prefill share  replicas      GPUs",
    ]
    for p in c.pools:
        lines.append(
            f"  {p.pool:<13} {_fmt(p.peak_requests_per_s):>11} {_fmt(p.prefill_tokens_per_request):>16} "
            f"{_fmt(p.decode_tokens_per_request):>15} {_fmt(p.replica_s_per_request):>14} "
            f"{p.prefill_share:>14.3f} {_fmt(p.replicas):>9} {_fmt(p.gpus):>9}"
        )
    lines += [
        "FLEET",
        f"  requests/s: average {_fmt(c.average_requests_per_s)}, peak {_fmt(c.peak_requests_per_s)}",
        f"  replicas {_fmt(c.replicas)}, GPUs {_fmt(c.gpus)}",
        f"  cells {_fmt(c.cells)} ({_fmt(c.replicas_per_cell)} replicas each at most)",
        f"  gateway replicas {_fmt(c.gateway_replicas)} ({_fmt(c.gateway_replicas_per_cell)} per cell)",
        f"  Redis: {_fmt(c.redis_ops_per_s)} decisions/s, {_fmt(c.redis_keys_per_s)} keys/s; "
        f"{_fmt(c.redis_shards)} shards ({_fmt(c.redis_shards_per_cell)} per cell's cluster), "
        f"{_fmt(c.redis_nodes)} nodes",
        f"  mirror stream: {_fmt(c.mirror_records_per_s)} records/s, {c.mirror_bytes_per_s / 1e6:,.1f} MB/s",
    ]
    return "\n".join(lines)


def run_capacity(args: argparse.Namespace) -> int:
    """Prints the report; writes JSON with --json. A missing or bad figure prints
    `capacity: name: why` and returns 2."""
    try:
        figures = figures_from_args(args)
        c = plan(figures)
        lays = layouts(figures)
    except (ValueError, OSError) as e:
        print(f"capacity: {e}", file=sys.stderr)
        return 2
    print(format_text(figures, lays, c))
    if args.json:
        doc = {
            "figures": {name: f.to_json() for name, f in figures.used.items()},
            "layouts": [{**vars(lay), "gpus": lay.gpus} for lay in lays],
            "plan": c.to_json(),
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0
