"""`museserve ops adapters`: a pool's LoRA adapters as its replicas are told to hold them.

`load` and `unload` edit the pool deployment's `user_config` in `serveConfigV2` (one JSON merge
patch of the RayService); Serve hands it to every replica of the pool live, with no restart
(`ModelPoolDeployment.reconfigure`). `load NAME` makes every replica load NAME now and never
evict it; `unload NAME` evicts it (once no request uses it) and refuses requests for it until
it is loaded again. `list` shows what the pools serve (the museserve config's `lora` section)
and what the operators asked. Pure functions of the objects read from the cluster.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from museserve.ops.patches import Change, OpsError, deployment_name, find_deployment, serve_config, serve_config_change

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # config.lora.ADAPTER_NAME


def adapters_change(
    rayservice: dict[str, Any], pool: str, *, load: str | None = None, unload: str | None = None
) -> Change:
    """The pool's `user_config.adapters` with `load` kept (and enabled) or `unload` disabled."""
    name = load or unload
    if name is None or (load is not None and unload is not None):
        raise OpsError("give one adapter to load or to unload")
    if not _NAME.match(name):
        raise OpsError(f"{name!r} is not an adapter name (letters, digits, '.', '_', '-'; at most 64)")
    before = serve_config(rayservice)
    after = serve_config(rayservice)
    deployment = find_deployment(after, deployment_name(pool))
    wishes = deployment.setdefault("user_config", {}).setdefault("adapters", {})
    keep = [n for n in wishes.get("keep", []) if n != name]
    disabled = [n for n in wishes.get("disabled", []) if n != name]
    (keep if load else disabled).append(name)
    wishes["keep"], wishes["disabled"] = sorted(keep), sorted(disabled)
    return serve_config_change(before, after)


def adapters_lines(rayservice: dict[str, Any], configmap: dict[str, Any], key: str = "museserve.yaml") -> list[str]:
    """Per pool with adapters: those listed, the store directory, and the operators' keep/disabled."""
    text = (configmap.get("data") or {}).get(key)
    if text is None:
        raise OpsError(f"the ConfigMap has no key {key!r}")
    config = yaml.safe_load(text) or {}
    serve = serve_config(rayservice)
    lines = []
    for pool in config.get("pools", []):
        name = pool.get("name")
        lora = pool.get("lora") or {}
        try:
            wishes = (find_deployment(serve, deployment_name(name)).get("user_config") or {}).get("adapters") or {}
        except OpsError:
            wishes = {}
        if not (lora.get("adapters") or lora.get("directory") or wishes):
            continue
        listed = ", ".join(a.get("name", "?") for a in lora.get("adapters", [])) or "-"
        lines.append(f"pool {name}: {lora.get('max_loaded_adapters', 8)} slots per replica")
        lines.append(f"  listed: {listed}")
        lines.append(f"  store: {lora.get('directory') or '-'}")
        lines.append(f"  kept loaded: {', '.join(wishes.get('keep', [])) or '-'}")
        lines.append(f"  disabled: {', '.join(wishes.get('disabled', [])) or '-'}")
    return lines or ["no pool serves adapters"]
