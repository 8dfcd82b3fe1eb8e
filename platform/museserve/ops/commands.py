"""The `museserve ops` subcommands: argument parsing and the read -> diff -> `--yes` -> patch
sequence. What each changes, and why, is in the package docstring (`museserve.ops`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from museserve.ops.patches import Change, OpsError, canary_changes, drain_change, scale_change

Patch = Callable[[dict[str, Any]], None]


def add_ops_parser(commands: argparse._SubParsersAction) -> None:
    ops = commands.add_parser("ops", help="operate a museserve release in Kubernetes (RayService)")
    ops_sub = ops.add_subparsers(dest="ops_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, or the pod's)")
    common.add_argument(
        "--name", default="museserve", help="the RayService, named after the release (default %(default)s)"
    )
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config; in a pod: its account)"
    )
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("--cell", help="the cell (Ray cluster) to talk to: its kubeconfig, context and namespace "
                        "from --cells (docs/cells.md); explicit flags win")  # fmt: skip
    common.add_argument("--cells", default="cells.yaml", help="the cells YAML --cell reads (default %(default)s)")
    apply = argparse.ArgumentParser(add_help=False)
    apply.add_argument("--yes", action="store_true", help="apply the change (without it: show the diff only)")

    status = ops_sub.add_parser("status", parents=[common], help="conditions, applications, deployments, replicas")
    status.set_defaults(func=lambda a: _run(a, _status))

    scale = ops_sub.add_parser("scale", parents=[common, apply], help="set a deployment's replicas in serveConfigV2")
    scale.add_argument("pool", help="a pool name, or gateway / preprocess")
    scale.add_argument("--replicas", type=int, help="replica count of a fixed-size deployment")
    scale.add_argument("--min-replicas", type=int, help="lower autoscaling bound of an autoscaled deployment")
    scale.add_argument("--max-replicas", type=int, help="upper autoscaling bound of an autoscaled deployment")
    scale.set_defaults(func=lambda a: _run(a, _scale))

    canary = ops_sub.add_parser("canary", parents=[common, apply], help="set a pool's A/B share (the museserve config)")
    canary.add_argument("pool", help="the pool whose A/B split changes")
    canary.add_argument("--share", type=float, required=True, help="share of the pool's traffic to its candidate (0-1)")
    canary.add_argument("--configmap", help="the ConfigMap holding museserve.yaml (default: NAME-config)")
    canary.set_defaults(func=lambda a: _run(a, _canary))

    adapters = ops_sub.add_parser("adapters", help="a pool's LoRA adapters on its replicas")
    adapters_sub = adapters.add_subparsers(dest="adapters_command", required=True)
    listing = adapters_sub.add_parser("list", parents=[common], help="adapters served, kept loaded and disabled")
    listing.add_argument("--configmap", help="the ConfigMap holding museserve.yaml (default: NAME-config)")
    listing.set_defaults(func=lambda a: _run(a, _adapters_list))
    for verb, help_text in (
        ("load", "load an adapter on every replica of the pool now and keep it loaded"),
        ("unload", "evict an adapter from every replica once idle, and refuse it until loaded again"),
    ):
        sub = adapters_sub.add_parser(verb, parents=[common, apply], help=help_text)
        sub.add_argument("pool", help="the pool (its deployment pool-POOL)")
        sub.add_argument("adapter", help="the adapter's name")
        sub.set_defaults(func=lambda a, verb=verb: _run(a, lambda args, cluster: _adapters_set(args, cluster, verb)))

    drain = ops_sub.add_parser("drain", parents=[common, apply], help="take the gateway Service's endpoints away")
    drain.add_argument("--undo", action="store_true", help="give the Service its endpoints back")
    drain.add_argument("--service", help="the gateway Service (default: NAME-gateway)")
    drain.set_defaults(func=lambda a: _run(a, _drain))


def _run(args: argparse.Namespace, command: Callable[[argparse.Namespace, Any], int]) -> int:
    from museserve.ops.cluster import Cluster, NoCluster

    try:
        if args.cell:
            _select_cell(args)
    except (ValueError, OSError) as e:
        print(f"museserve ops: {e}", file=sys.stderr)
        return 2
    try:
        return command(args, Cluster(args.kubeconfig, args.context, args.namespace))
    except NoCluster as e:
        print(f"museserve ops: {e}", file=sys.stderr)
        return 2
    except OpsError as e:
        print(f"museserve ops: {e}", file=sys.stderr)
        return 1


def _select_cell(args: argparse.Namespace) -> None:
    """Fills kubeconfig, context and namespace not given on the command line from the cell's entry."""
    from museserve.ops.cells import cell_cluster

    cell = cell_cluster(args.cells, args.cell)
    for key in ("kubeconfig", "context", "namespace"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(cell, key))


def _status(args: argparse.Namespace, cluster: Any) -> int:
    from museserve.ops.status import status_lines

    rayservice = cluster.rayservice(args.name)
    try:
        service = cluster.service(f"{args.name}-gateway")
    except OpsError:
        service = None  # a release without the chart's gateway Service
    print("\n".join(status_lines(rayservice, service)))
    return 0


def _scale(args: argparse.Namespace, cluster: Any) -> int:
    change = scale_change(cluster.rayservice(args.name), args.pool, args.replicas, args.min_replicas, args.max_replicas)
    return apply_changes(
        [(f"RayService {args.name}", change, lambda p: cluster.patch_rayservice(args.name, p))], args.yes
    )


def _canary(args: argparse.Namespace, cluster: Any) -> int:
    configmap = args.configmap or f"{args.name}-config"
    config_change, serve_change = canary_changes(
        cluster.rayservice(args.name), cluster.configmap(configmap), args.pool, args.share
    )
    changes = [
        (f"ConfigMap {configmap}", config_change, lambda p: cluster.patch_configmap(configmap, p)),
        (f"RayService {args.name}", serve_change, lambda p: cluster.patch_rayservice(args.name, p)),
    ]
    code = apply_changes(changes, args.yes)
    if args.yes and code == 0:
        print(f"to keep it over the next helm upgrade: --set-json pools.{args.pool}.ab.share={args.share}")
    return code


def _adapters_list(args: argparse.Namespace, cluster: Any) -> int:
    from museserve.ops.adapters import adapters_lines

    configmap = args.configmap or f"{args.name}-config"
    print("\n".join(adapters_lines(cluster.rayservice(args.name), cluster.configmap(configmap))))
    return 0


def _adapters_set(args: argparse.Namespace, cluster: Any, verb: str) -> int:
    from museserve.ops.adapters import adapters_change

    names = {verb: args.adapter}
    change = adapters_change(cluster.rayservice(args.name), args.pool, **names)
    return apply_changes(
        [(f"RayService {args.name}", change, lambda p: cluster.patch_rayservice(args.name, p))], args.yes
    )


def _drain(args: argparse.Namespace, cluster: Any) -> int:
    service = args.service or f"{args.name}-gateway"
    change = drain_change(cluster.service(service), undo=args.undo)
    return apply_changes([(f"Service {service}", change, lambda p: cluster.patch_service(service, p))], args.yes)


def apply_changes(changes: list[tuple[str, Change, Patch]], yes: bool) -> int:
    """Shows every diff; with `yes`, sends the patches in order (those with a diff)."""
    if not any(change.diff for _, change, _ in changes):
        print("nothing to change")
        return 0
    for _, change, _ in changes:
        if change.diff:
            print(change.diff, end="" if change.diff.endswith("\n") else "\n")
    if not yes:
        print("dry run: nothing applied; pass --yes to apply")
        return 0
    for label, change, send in changes:
        if change.diff:
            send(change.patch)
            print(f"patched {label}")
    return 0
