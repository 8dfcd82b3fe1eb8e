"""The changes `museserve ops` makes, as pure functions of the objects read from the cluster:
each returns the JSON merge patch to send and the text diff to show."""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

DRAIN_LABEL = "museserve.io/drained"


class OpsError(Exception):
    """A request the objects cannot satisfy (an unknown pool, a pool with no A/B split)."""


@dataclass(frozen=True)
class Change:
    patch: dict[str, Any]  # JSON merge patch of one object
    diff: str  # unified diff of what changes, empty when nothing does


def deployment_name(pool: str) -> str:
    """`gateway` and `preprocess` name themselves; any other name is a model pool."""
    return pool if pool in ("gateway", "preprocess") else f"pool-{pool}"


def serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    text = rayservice.get("spec", {}).get("serveConfigV2")
    if not text:
        raise OpsError("the RayService has no spec.serveConfigV2")
    return yaml.safe_load(text)


def find_deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    for app in config.get("applications", []):
        for deployment in app.get("deployments", []):
            if deployment.get("name") == name:
                return deployment
    known = [d.get("name") for app in config.get("applications", []) for d in app.get("deployments", [])]
    raise OpsError(f"no Serve deployment {name!r} in serveConfigV2 (deployments: {', '.join(map(str, known))})")


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def text_diff(before: str, after: str, label: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"{label} (now)", f"{label} (patched)"
    )
    return "".join(lines)


def serve_config_change(before: dict[str, Any], after: dict[str, Any]) -> Change:
    old, new = dump(before), dump(after)
    return Change({"spec": {"serveConfigV2": new}}, text_diff(old, new, "serveConfigV2"))


def scale_change(
    rayservice: dict[str, Any],
    pool: str,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
) -> Change:
    """A fixed deployment gets `num_replicas`; an autoscaled one its autoscaling bounds."""
    before = serve_config(rayservice)
    after = serve_config(rayservice)
    deployment = find_deployment(after, deployment_name(pool))
    autoscaling = deployment.get("autoscaling_config")
    if deployment.get("num_replicas") == "auto" or autoscaling:
        if replicas is not None:
            raise OpsError(f"{deployment['name']} autoscales: give --min-replicas and/or --max-replicas")
        if min_replicas is None and max_replicas is None:
            raise OpsError("give --min-replicas and/or --max-replicas")
        bounds = dict(autoscaling or {})
        bounds.update(
            {k: v for k, v in (("min_replicas", min_replicas), ("max_replicas", max_replicas)) if v is not None}
        )
        if bounds.get("max_replicas", 1) < max(1, bounds.get("min_replicas", 0)):
            raise OpsError(f"max_replicas ({bounds['max_replicas']}) must be >= 1 and >= min_replicas")
        deployment["autoscaling_config"] = bounds
    else:
        if replicas is None or min_replicas is not None or max_replicas is not None:
            raise OpsError(f"{deployment['name']} has a fixed replica count: give --replicas only")
        if replicas < 1:
            raise OpsError("--replicas must be at least 1 (Serve needs one; `ops drain` stops traffic instead)")
        deployment["num_replicas"] = replicas
    return serve_config_change(before, after)


def canary_changes(
    rayservice: dict[str, Any], configmap: dict[str, Any], pool: str, share: float, key: str = "museserve.yaml"
) -> tuple[Change, Change]:
    """The ConfigMap's new museserve config (the pool's `ab.share`), then the new file's digest
    in `serveConfigV2`; apply in that order."""
    if not 0.0 <= share <= 1.0:
        raise OpsError(f"--share must be between 0 and 1, not {share}")
    text = (configmap.get("data") or {}).get(key)
    if text is None:
        raise OpsError(f"the ConfigMap has no key {key!r}")
    config = yaml.safe_load(text) or {}
    pools = {p.get("name"): p for p in config.get("pools", [])}
    if pool not in pools:
        raise OpsError(f"no pool {pool!r} in the museserve config (pools: {', '.join(map(str, pools))})")
    if not pools[pool].get("ab"):
        raise OpsError(f"pool {pool!r} has no A/B candidate (set pools.{pool}.ab.candidate in the release values)")
    pools[pool]["ab"]["share"] = share
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    new_text = header + dump(config)
    config_change = Change({"data": {key: new_text}}, text_diff(text, new_text, f"ConfigMap {key}"))

    before = serve_config(rayservice)
    after = serve_config(rayservice)
    for app in after.get("applications", []):
        if "config_sha256" in (app.get("args") or {}):
            app["args"]["config_sha256"] = hashlib.sha256(new_text.encode()).hexdigest()
    return config_change, serve_config_change(before, after)


def drain_change(service: dict[str, Any], undo: bool = False) -> Change:
    """Adds (or with `undo` removes) a selector no pod matches: the Service loses its endpoints."""
    selector = dict(service.get("spec", {}).get("selector") or {})
    after = {k: v for k, v in selector.items() if k != DRAIN_LABEL}
    if not undo:
        after[DRAIN_LABEL] = "true"
    value = None if undo else "true"
    diff = text_diff(dump({"selector": selector}), dump({"selector": after}), "Service selector")
    return Change({"spec": {"selector": {DRAIN_LABEL: value}}}, diff)
