"""Builds helm/museserve/values.schema.json: the chart's own keys, written here, and the
museserve config's keys, generated from the pydantic models (so the chart refuses exactly
what the loader refuses, field by field). `test_chart.py` fails when the committed file
differs from what this builds; regenerate with

    .venv/bin/python -m tests.deploy.chart_schema
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from museserve.config import MuseServeConfig, PoolConfig

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "helm" / "museserve" / "values.schema.json"

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT: Schema = {"type": "object"}  # a Kubernetes type, checked by kubernetes-validate once rendered
ARRAY: Schema = {"type": "array"}
QUANTITY: Schema = {"type": ["string", "null"], "pattern": r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"}


def closed(properties: dict[str, Schema], required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [{"type": "null"}, schema]}


def integer(minimum: int, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


POSITIVE: Schema = {"type": "number", "exclusiveMinimum": 0}

# Ray Serve's autoscaling_config keys that museserve deployments use; Ray validates the rest.
AUTOSCALING = nullable(
    closed(
        {
            "min_replicas": integer(0),
            "initial_replicas": integer(0),
            "max_replicas": integer(1),
            "target_ongoing_requests": POSITIVE,
            "upscale_delay_s": {"type": "number", "minimum": 0},
            "downscale_delay_s": {"type": "number", "minimum": 0},
            "upscaling_factor": POSITIVE,
            "downscaling_factor": POSITIVE,
            "metrics_interval_s": POSITIVE,
            "look_back_period_s": POSITIVE,
        },
        ["min_replicas", "max_replicas"],
    )
)

SCHEDULING: dict[str, Schema] = {
    "nodeSelector": STRING_MAP,
    "tolerations": ARRAY,
    "affinity": OBJECT,
    "annotations": STRING_MAP,
    "priorityClassName": STRING,
    "resources": OBJECT,
    "shmSize": QUANTITY,
}

GROUP_NAME = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"


def museserve_schemas() -> tuple[Schema, Schema, Schema]:
    """(config schema without pools, one pool entry's schema, shared $defs) from pydantic."""
    root = MuseServeConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs: Schema = root.pop("$defs")
    config = copy.deepcopy(root)
    config["properties"].pop("pools")
    config["required"] = [r for r in config.get("required", []) if r != "pools"]
    if not config["required"]:
        config.pop("required")
    pool = copy.deepcopy(defs[PoolConfig.__name__])
    pool["properties"].pop("name")
    pool["required"] = [r for r in pool.get("required", []) if r != "name"] + ["workerGroup", "deployment"]
    pool["properties"]["workerGroup"] = {
        "type": "string",
        "pattern": GROUP_NAME,
        "description": "Key of rayCluster.workerGroups this pool's replicas run on (its GPUs, or its CPUs "
        "when its gpusPerPod is 0).",
    }
    pool["properties"]["autoscaling"] = AUTOSCALING
    pool["title"] = "Pool"
    return config, pool, defs


def build_schema() -> Schema:
    config, pool, defs = museserve_schemas()
    worker_group = closed(
        {
            "gpusPerPod": {**integer(0, 16), "description": "GPUs of each pod (nvidia.com/gpu); 0: a CPU group."},
            "minReplicas": integer(0),
            "maxReplicas": integer(1),
            **SCHEDULING,
        },
        ["gpusPerPod", "minReplicas", "maxReplicas", "resources"],
    )
    peers = {"type": "array", "items": OBJECT}
    properties: dict[str, Schema] = {
        "nameOverride": STRING,
        "fullnameOverride": STRING,
        "commonLabels": STRING_MAP,
        "image": closed(
            {
                "repository": {"type": "string", "minLength": 1},
                "tag": STRING,
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
            ["repository", "tag", "pullPolicy"],
        ),
        "imagePullSecrets": ARRAY,
        "serviceAccountName": STRING,
        "rayVersion": {"type": "string", "pattern": r"^2\.[0-9]+\.[0-9]+$"},
        "logLevel": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]},
        "extraEnv": ARRAY,
        "podSecurityContext": OBJECT,
        "securityContext": OBJECT,
        "config": config,
        "pools": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9._-]{0,62}$"},
            "additionalProperties": {"$ref": "#/$defs/ChartPool"},
        },
        "autoscaling": closed({"gateway": AUTOSCALING, "preprocess": AUTOSCALING}),  # null keys: Helm drops them
        "serve": closed(
            {
                "upgradeStrategy": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]},
                "proxyLocation": {"enum": ["EveryNode", "HeadOnly"]},
                "configWaitSeconds": integer(10, 3600),
                "clusterDeletionDelaySeconds": nullable(integer(0, 86400)),
            },
            ["upgradeStrategy", "proxyLocation", "configWaitSeconds"],
        ),
        "rayCluster": closed(
            {
                "autoscaler": closed(
                    {
                        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                        "idleTimeoutSeconds": integer(0),
                        "resources": OBJECT,
                    },
                    ["upscalingMode", "idleTimeoutSeconds"],
                ),
                "head": closed(SCHEDULING, ["resources"]),
                "gatewayGroup": closed(
                    {
                        "minReplicas": integer(1),
                        "maxReplicas": integer(1),
                        "preprocessSlots": integer(1, 64),
                        **SCHEDULING,
                    },
                    ["minReplicas", "maxReplicas", "preprocessSlots", "resources"],
                ),
                "workerGroups": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"pattern": GROUP_NAME},
                    "additionalProperties": worker_group,
                },
            },
            ["autoscaler", "head", "gatewayGroup", "workerGroups"],
        ),
        "modelVolume": nullable(OBJECT),
        "modelMountPath": {"type": "string", "pattern": "^/"},
        "redis": closed(
            {
                "existingSecret": STRING,
                "secretKey": {"type": "string", "minLength": 1},
                "embedded": closed(
                    {
                        "enabled": {"type": "boolean"},
                        "image": closed(
                            {
                                "repository": STRING,
                                "tag": STRING,
                                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                            },
                            ["repository", "tag", "pullPolicy"],
                        ),
                        "maxmemory": {"type": "string", "pattern": r"^[0-9]+(kb|mb|gb)$"},
                        "resources": OBJECT,
                        "cluster": closed(
                            {"enabled": {"type": "boolean"}, "masters": integer(3, 16)},
                            ["enabled", "masters"],
                        ),
                    },
                    ["enabled"],
                ),
            },
            ["existingSecret", "secretKey", "embedded"],
        ),
        "apiKeys": closed({"existingSecret": STRING, "secretKey": {"type": "string", "minLength": 1}}),
        "service": closed(
            {
                "type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]},
                "annotations": STRING_MAP,
                "loadBalancerSourceRanges": {"type": "array", "items": STRING},
                "grpcPort": integer(1, 65535),
                "httpPort": integer(1, 65535),
                "exposeProxyPort": {"type": "boolean"},
            },
            ["type", "grpcPort", "httpPort"],
        ),
        "metrics": closed(
            {
                "port": integer(1, 65535),
                "serviceMonitor": closed(
                    {
                        "enabled": {"type": "boolean"},
                        "labels": STRING_MAP,
                        "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m)$"},
                        "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m)$"},
                    },
                    ["enabled"],
                ),
                "prometheusRule": closed({"enabled": {"type": "boolean"}, "labels": STRING_MAP}, ["enabled"]),
                "grafanaDashboard": closed(
                    {"enabled": {"type": "boolean"}, "labels": STRING_MAP, "annotations": STRING_MAP}, ["enabled"]
                ),
            },
            ["port"],
        ),
        "podDisruptionBudget": closed(
            {
                "enabled": {"type": "boolean"},
                "gateway": closed({"maxUnavailable": {"type": ["integer", "string"]}}, ["maxUnavailable"]),
                "workers": closed({"maxUnavailable": {"type": ["integer", "string"]}}, ["maxUnavailable"]),
            },
            ["enabled"],
        ),
        "networkPolicy": closed(
            {
                "enabled": {"type": "boolean"},
                "clients": peers,
                "prometheus": peers,
                "kuberayOperator": peers,
                "egress": closed(
                    {
                        "enabled": {"type": "boolean"},
                        "dns": peers,
                        "apiServer": closed(
                            {
                                "cidrs": {"type": "array", "items": STRING},
                                "ports": {"type": "array", "items": integer(1, 65535)},
                            },
                            ["cidrs", "ports"],
                        ),
                        "redis": closed(
                            {"cidrs": {"type": "array", "items": STRING}, "port": integer(1, 65535)}, ["cidrs", "port"]
                        ),
                        "extra": ARRAY,
                    },
                    ["enabled"],
                ),
            },
            ["enabled"],
        ),
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "museserve chart values",
        "description": "Generated by tests/deploy/chart_schema.py; the museserve config parts come from its pydantic models.",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "config", "pools", "rayCluster", "redis", "service", "metrics", "serve", "autoscaling"],
        "properties": properties,
        "$defs": {**defs, "ChartPool": pool},
    }


def render_schema() -> str:
    return json.dumps(build_schema(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render_schema())
    print(f"wrote {SCHEMA_PATH}")
