"""`museserve ops status`: a RayService (ray.io/v1) as lines of text, from the object alone.

KubeRay reports the Serve applications and deployments of the active (and, during an
upgrade, the pending) cluster by status; Serve's replica counts are not in the object, so
the desired counts come from `serveConfigV2` and the running pods from the cluster status.
"""

from __future__ import annotations

from typing import Any

from museserve.ops.patches import DRAIN_LABEL, OpsError, serve_config


def desired_replicas(deployment: dict[str, Any]) -> str:
    autoscaling = deployment.get("autoscaling_config")
    if deployment.get("num_replicas") == "auto" or autoscaling:
        bounds = autoscaling or {}
        return f"autoscaling {bounds.get('min_replicas', '?')}-{bounds.get('max_replicas', '?')}"
    return str(deployment.get("num_replicas", 1))


def _cluster_lines(label: str, status: dict[str, Any], desired: dict[str, str]) -> list[str]:
    cluster = status.get("rayClusterStatus") or {}
    pods = ", ".join(
        f"{key.removesuffix('WorkerReplicas')} {cluster[key]}"
        for key in ("readyWorkerReplicas", "availableWorkerReplicas", "desiredWorkerReplicas")
        if key in cluster
    )
    lines = [f"{label} cluster {status.get('rayClusterName', '?')}" + (f": worker pods {pods}" if pods else "")]
    for app, app_status in sorted((status.get("applicationStatuses") or {}).items()):
        message = f" ({app_status['message']})" if app_status.get("message") else ""
        lines.append(f"  application {app}: {app_status.get('status', '?')}{message}")
        for name, dep in sorted((app_status.get("serveDeploymentStatuses") or {}).items()):
            message = f" ({dep['message']})" if dep.get("message") else ""
            replicas = f", replicas {desired[name]}" if name in desired else ""
            lines.append(f"    {name}: {dep.get('status', '?')}{replicas}{message}")
    return lines


def status_lines(rayservice: dict[str, Any], gateway_service: dict[str, Any] | None = None) -> list[str]:
    meta, status = rayservice.get("metadata", {}), rayservice.get("status") or {}
    lines = [f"RayService {meta.get('namespace', '?')}/{meta.get('name', '?')}"]
    if "serviceStatus" in status:
        lines[0] += f": {status['serviceStatus']}"
    for condition in status.get("conditions") or []:
        reason = f" ({condition['reason']})" if condition.get("reason") else ""
        message = f": {condition['message']}" if condition.get("message") else ""
        lines.append(f"  condition {condition.get('type')}={condition.get('status')}{reason}{message}")
    if "numServeEndpoints" in status:
        lines.append(f"  serve endpoints: {status['numServeEndpoints']}")
    try:
        config = serve_config(rayservice)
    except OpsError:
        config = {}
    desired = {d["name"]: desired_replicas(d) for app in config.get("applications", []) for d in app["deployments"]}
    for label in ("active", "pending"):
        if status.get(f"{label}ServiceStatus"):
            lines += _cluster_lines(label, status[f"{label}ServiceStatus"], desired)
    if not status.get("activeServiceStatus"):
        lines.append("desired replicas (serveConfigV2): " + ", ".join(f"{k} {v}" for k, v in desired.items()))
    if gateway_service is not None:
        drained = DRAIN_LABEL in ((gateway_service.get("spec") or {}).get("selector") or {})
        name = gateway_service.get("metadata", {}).get("name", "?")
        lines.append(f"gateway Service {name}: {'DRAINED (no endpoints)' if drained else 'serving'}")
    return lines
