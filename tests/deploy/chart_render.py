"""Renders helm/museserve with the real Helm engine (helm-python-sdk, pinned) and reads the
objects back, for the chart tests."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "museserve"
# Each environment's values file; `defaults` has none: `helm install museserve helm/museserve`.
ENVIRONMENTS: dict[str, Path | None] = {
    "defaults": None,
    "staging": ROOT / "deploy" / "staging" / "values.yaml",
    "prod": ROOT / "deploy" / "prod" / "values.yaml",
}
KUBE_VERSION = "1.31.0"
RELEASE = "museserve"
NAMESPACE = "museserve"
# CRD-backed API versions the target clusters serve (KubeRay, prometheus-operator).
API_VERSIONS = ["ray.io/v1", "monitoring.coreos.com/v1"]

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    objects: tuple[Obj, ...]
    notes: str

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> Obj:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {len(found)}"
        return found[0]


def env_values(env: str) -> dict[str, Any]:
    """The values an install of `env` passes (-f FILE); nothing for the chart's defaults."""
    path = ENVIRONMENTS[env]
    return helm.values_from_yaml(path.read_text()) if path is not None else {}


def chart_defaults() -> dict[str, Any]:
    """helm/museserve/values.yaml: what Helm merges every install's values into."""
    return helm.values_from_yaml((CHART / "values.yaml").read_text())


def with_change(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `values` with the dotted key `path` set, as `--set-json path=value` would."""
    changed = copy.deepcopy(values)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return changed


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render_manifests(values: dict[str, Any], api_versions: list[str] = API_VERSIONS) -> dict[str, str]:
    """`helm template` for KUBE_VERSION: the SDK's Chart.render takes no kube_version or
    api_versions, so the native call (same library, its documented option names) is used."""
    options = {
        "name": RELEASE,
        "namespace": NAMESPACE,
        "is_install": True,
        "kube_version": f"v{KUBE_VERSION}",
        "api_versions": api_versions,
    }
    rendered = _native.call_string("helm_render", chart()._raw(), json.dumps(values), json.dumps(options))
    return json.loads(rendered)


def render(values: dict[str, Any], api_versions: list[str] = API_VERSIONS) -> Rendered:
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(render_manifests(values, api_versions).items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(tuple(objects), notes)


@cache
def render_env(env: str) -> Rendered:
    return render(env_values(env))


def serve_config(rendered: Rendered) -> dict[str, Any]:
    return yaml.safe_load(rendered.one("RayService")["spec"]["serveConfigV2"])


def config_file(rendered: Rendered) -> str:
    return rendered.one("ConfigMap", "-config")["data"]["museserve.yaml"]


def ray_pod_templates(rendered: Rendered) -> dict[str, Obj]:
    """Pod templates of the RayService by group ("head" for the head group)."""
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]["template"]}
    pods.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return pods


def ray_start_resources(group: Obj) -> dict[str, float]:
    """The custom resources of `ray start --resources='"{...}"'` as KubeRay passes them."""
    raw = group["rayStartParams"]["resources"]
    return json.loads(json.loads(raw))  # a JSON string inside double quotes
