"""helm/museserve, checked without a cluster: rendered by the real Helm engine for the chart's
defaults and each environment's values, linted strict, every built-in kind validated against
the Kubernetes schemas of KUBE_VERSION, and the rendered Serve config and museserve config
read back by Ray's and our own loaders. The custom resources are checked against their CRDs
in test_crds.py, the defaults' CPU cell in test_chart_defaults.py."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from museserve.config import DeploymentConfig, Environment, MuseServeConfig, load_config
from museserve.serve.app import (
    GATEWAY_DEPLOYMENT,
    GRPC_SERVICER_FUNCTIONS,
    PREPROCESS_DEPLOYMENT,
    pool_deployment_name,
    ray_process_environment,
)
from museserve.serve.entrypoint import app_builder
from tests.deploy.chart_render import (
    CHART,
    ENVIRONMENTS,
    KUBE_VERSION,
    ROOT,
    Rendered,
    config_file,
    env_values,
    ray_pod_templates,
    ray_start_resources,
    render,
    render_env,
    serve_config,
    with_change,
)
from tests.deploy.chart_schema import SCHEMA_PATH, render_schema
from tests.deploy.crds import is_custom

ENVS = list(ENVIRONMENTS)
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
)


def loaded_config(rendered: Rendered, tmp_path: Path, values: dict[str, Any]) -> MuseServeConfig:
    """The museserve config as a pod loads it: the ConfigMap's file plus what the pod's
    Secrets add through the environment (a stand-in URL and key file: the Secrets are external)."""
    path = tmp_path / "museserve.yaml"
    path.write_text(config_file(rendered))
    redis = values.get("redis", {})
    embedded = redis.get("embedded", {}).get("enabled", True)
    redis_url = "redis://redis.test:6379/0" if embedded or redis.get("existingSecret") else None
    keys_file = None
    if values.get("apiKeys", {}).get("existingSecret"):
        keys_file = tmp_path / "api-keys.yaml"
        keys_file.write_text(yaml.safe_dump([{"sha256": "ab" * 32, "tenant": "ci", "tier": "default"}]))
    return load_config(path, Environment(redis_url=redis_url, api_keys_file=str(keys_file) if keys_file else None))


# ---- Helm: lint, schema ----


@pytest.mark.parametrize("env", ENVS)
def test_lint_strict(env: str) -> None:
    report = helm.lint(CHART, env_values(env), strict=True, kube_version=f"v{KUBE_VERSION}", namespace="museserve")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
    assert not problems, problems


def test_values_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), "run: .venv/bin/python -m tests.deploy.chart_schema"


@pytest.mark.parametrize(
    ("path", "value", "mentions"),
    [
        ("config.server.grpc_prot", 50051, "grpc_prot"),  # a typo is refused, not ignored
        ("pools.muse.ab.share", 1.5, "share"),
        ("pools.muse.ab.share", "0.05", "share"),  # `--set` makes floats strings: use --set-json
        ("pools.muse.engine.context_length", 8, "context_length"),
        ("pools.muse.workerGroup", None, "workerGroup"),
        ("config.gateway.auth", "oauth", "auth"),
        ("serve.upgradeStrategy", "InPlace", "upgradeStrategy"),
        ("rayCluster.workerGroups.h100.gpusPerPod", -1, "gpusPerPod"),
        ("service.type", "ExternalName", "type"),
    ],
)
def test_values_schema_rejects(path: str, value: Any, mentions: str) -> None:
    values = with_change(env_values("prod"), path, value)
    if value is None:
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node[key]
        del node[last]
    with pytest.raises(helm.HelmValuesError, match=mentions):
        render(values)


@pytest.mark.parametrize(
    ("path", "value", "mentions"),
    [
        ("pools.muse.workerGroup", "a100", "is not a key of rayCluster.workerGroups"),
        ("pools.muse.deployment.num_gpus", 8, "the replica holds no GPU"),
        ("pools.muse.parallel", {"tensor": 16}, "a stage's workers share one pod"),
        ("pools.muse.autoscaling.max_replicas", 64, "exceeds what rayCluster.workerGroups.h100 can hold"),
        ("config.server.direct_grpc_host", "127.0.0.1", "must bind all interfaces"),
        ("redis.embedded.enabled", True, "not both"),
        ("rayCluster.workerGroups.h100.gpusPerPod", 0, r"h100 has no GPUs \(gpusPerPod 0\)"),
        ("pools.muse-fast.deployment.num_cpus", 97, "exceeds the 96 CPUs Ray counts"),
        ("config.gateway.default_model", "smollm2-135m", "is not a key of pools"),
        ("config.gateway.routes.thinking", "muse-tiny", "is not a key of pools"),
    ],
)
def test_cross_value_checks_fail_the_render(path: str, value: Any, mentions: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=mentions):
        render(with_change(env_values("prod"), path, value))


def test_canary_step_with_reuse_values() -> None:
    """deploy/README.md's canary: `helm upgrade --reuse-values --set-json
    'pools.muse.ab.share=0.1'`. Helm coalesces the new map into the release's values, so only
    that key moves; the Serve config changes (an in-place update), the pod templates do not."""
    before = env_values("prod")
    step = helm.parse_set_json("pools.muse.ab.share=0.1")
    after = copy.deepcopy(before)
    after["pools"]["muse"]["ab"].update(step["pools"]["muse"]["ab"])
    old, new = render(before), render(after)
    config = yaml.safe_load(config_file(new))
    shares = {p["name"]: (p.get("ab") or {}).get("share") for p in config["pools"]}
    assert shares == {"muse": 0.1, "muse-fast": None, "muse-next": None}
    assert serve_config(old) != serve_config(new)
    assert ray_pod_templates(old) == ray_pod_templates(new)


# ---- Kubernetes schemas ----


@pytest.mark.parametrize("env", ENVS)
def test_builtin_kinds_are_valid_kubernetes(env: str) -> None:
    builtin = [o for o in render_env(env).objects if not is_custom(o)]
    assert {o["kind"] for o in builtin} >= {"ConfigMap", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    for obj in builtin:
        # strict: unknown fields fail; a kind with no schema raises SchemaNotFoundError.
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# ---- the configs inside ----


def deployment_knobs(config: MuseServeConfig) -> dict[str, DeploymentConfig]:
    """Each Serve deployment's name -> the museserve config's knobs for it."""
    return {
        GATEWAY_DEPLOYMENT: config.gateway.deployment,
        PREPROCESS_DEPLOYMENT: config.preprocess.deployment,
        **{pool_deployment_name(p): p.deployment for p in config.pools},
    }


@pytest.mark.parametrize("env", ENVS)
def test_serve_config_and_configmap_describe_one_app(env: str, tmp_path: Path) -> None:
    rendered = render_env(env)
    config = loaded_config(rendered, tmp_path, env_values(env))
    serve = ServeDeploySchema.model_validate(serve_config(rendered)).model_dump(exclude_unset=True)

    assert serve["grpc_options"]["port"] == config.server.grpc_port
    assert serve["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICER_FUNCTIONS
    assert serve["http_options"]["port"] == config.server.http_port
    (app,) = serve["applications"]
    assert app["name"] == config.app_name
    module, attr = app["import_path"].split(":")
    assert getattr(importlib.import_module(module), attr) is app_builder
    assert app["args"]["config_sha256"] == hashlib.sha256(config_file(rendered).encode()).hexdigest()

    deployments = {d["name"]: d for d in app["deployments"]}
    tiers = deployment_knobs(config)
    assert set(deployments) == set(tiers)
    for name, knobs in tiers.items():
        d = deployments[name]
        assert d["max_ongoing_requests"] == knobs.max_ongoing_requests, name
        assert d["max_queued_requests"] == knobs.max_queued_requests, name
        assert d["ray_actor_options"]["num_cpus"] == knobs.num_cpus, name
        assert d["ray_actor_options"]["num_gpus"] == knobs.num_gpus, name
        if d["num_replicas"] != "auto":
            assert d["num_replicas"] == knobs.num_replicas, name


@pytest.mark.parametrize("env", ENVS)
def test_the_old_cluster_outlives_the_drain_after_an_upgrade(env: str, tmp_path: Path) -> None:
    rendered = render_env(env)
    config = loaded_config(rendered, tmp_path, env_values(env))
    delay = rendered.one("RayService")["spec"]["rayClusterDeletionDelaySeconds"]
    assert isinstance(delay, int) and delay >= config.server.drain_timeout_s + 5


@pytest.mark.parametrize("env", ENVS)
def test_every_deployment_has_a_group_to_run_on(env: str, tmp_path: Path) -> None:
    rendered = render_env(env)
    config = loaded_config(rendered, tmp_path, env_values(env))
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    offered = {g["groupName"]: ray_start_resources(g) for g in cluster["workerGroupSpecs"]}
    assert "GPU" not in json.dumps(cluster["headGroupSpec"]["rayStartParams"])
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (app,) = serve_config(rendered)["applications"]
    for d in app["deployments"]:
        (resource, amount), *_ = d["ray_actor_options"]["resources"].items()
        assert amount > 0, f"{d['name']} asks for 0 {resource}: Ray would place it anywhere"
        hosts = [g for g, res in offered.items() if res.get(resource, 0) >= amount]
        assert hosts, f"{d['name']} needs {amount} {resource}; no group offers it"
    gpus = {
        g["groupName"]: g["template"]["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        for g in cluster["workerGroupSpecs"]
        if g["groupName"] != "gateway"
    }
    for pool in config.pools:
        if pool.parallel.world_size > 1:  # the workers hold the GPUs, a stage's on one pod
            assert pool.deployment.num_gpus == 0
            assert max(gpus.values()) >= pool.parallel.tensor
        elif pool.deployment.num_gpus > 0:
            assert max(gpus.values()) >= pool.deployment.num_gpus, pool.name
    assert cluster["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize("env", ENVS)
def test_ray_containers_carry_the_museserve_environment(env: str, tmp_path: Path) -> None:
    rendered = render_env(env)
    config = loaded_config(rendered, tmp_path, env_values(env))
    (app,) = serve_config(rendered)["applications"]
    for group, pod in ray_pod_templates(rendered).items():
        container = pod["spec"]["containers"][0]
        env_vars = {e["name"]: e.get("value") for e in container["env"]}
        for key, value in ray_process_environment(config).items():
            assert env_vars.get(key) == value, (group, key)
        assert env_vars["MUSESERVE_CONFIG"] == app["args"]["config"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(app["args"]["config"]).parent) in mounts


# ---- labels, ports, probes ----


@pytest.mark.parametrize("env", ENVS)
def test_standard_labels_on_every_object_and_pod(env: str) -> None:
    rendered = render_env(env)
    labelled = list(rendered.objects) + list(ray_pod_templates(rendered).values())
    labelled += [d["spec"]["template"] for d in rendered.of_kind("Deployment")]
    for obj in labelled:
        labels = obj["metadata"]["labels"]
        missing = [k for k in STANDARD_LABELS if k not in labels]
        assert not missing, (obj.get("kind", "pod template"), obj["metadata"].get("name"), missing)
        assert labels["app.kubernetes.io/instance"] == "museserve"


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("env", ENVS)
def test_gateway_ports_follow_the_config(env: str, tmp_path: Path) -> None:
    rendered = render_env(env)
    values = env_values(env) or {}
    server = loaded_config(rendered, tmp_path, values).server
    pods = ray_pod_templates(rendered)
    gateway_pod = pods["gateway"]

    service = rendered.one("Service", "-gateway")
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets["grpc"] == server.direct_grpc_port
    assert targets["http"] == server.http_port
    assert targets.get("grpc-proxy", server.grpc_port) == server.grpc_port
    matching = [g for g, pod in pods.items() if selects(service["spec"]["selector"], pod["metadata"]["labels"])]
    assert matching == ["gateway"]

    container = gateway_pod["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == server.direct_grpc_port
    assert set(targets.values()) <= {p["containerPort"] for p in container["ports"]}

    policy = rendered.one("NetworkPolicy", "-gateway")
    (rule,) = policy["spec"]["ingress"]
    allowed = {p["port"] for p in rule["ports"]}
    assert allowed == {server.direct_grpc_port, server.grpc_port, server.http_port}
    assert selects(policy["spec"]["podSelector"]["matchLabels"], gateway_pod["metadata"]["labels"])


@pytest.mark.parametrize("env", ENVS)
def test_metrics_reach_every_ray_pod(env: str) -> None:
    rendered = render_env(env)
    metrics = rendered.one("Service", "-ray-metrics")
    (port,) = metrics["spec"]["ports"]
    for group, pod in ray_pod_templates(rendered).items():
        assert selects(metrics["spec"]["selector"], pod["metadata"]["labels"]), group
        assert port["targetPort"] in {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}, group
    monitor = rendered.one("ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], metrics["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    ray_policy = rendered.one("NetworkPolicy", "-ray")
    scrape_ports = [{p["port"] for p in r.get("ports", [])} for r in ray_policy["spec"]["ingress"]]
    assert {port["port"]} in scrape_ports


@pytest.mark.parametrize("env", ENVS)
def test_rules_and_dashboard_come_from_the_chart_files(env: str) -> None:
    rendered = render_env(env)
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rendered.one("PrometheusRule")["spec"]["groups"] == rules["groups"]
    dashboard = rendered.one("ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["museserve.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )


def test_redis_comes_from_a_secret() -> None:
    for env in ENVS:  # the release's own Secret (staging Redis) or the one prod names: same name
        rendered = render_env(env)
        for pod in ray_pod_templates(rendered).values():
            (redis_env,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "MUSESERVE_REDIS_URL"]
            assert redis_env["valueFrom"]["secretKeyRef"]["name"] == "museserve-redis"
        assert "url:" not in yaml.safe_dump(yaml.safe_load(config_file(rendered))["gateway"].get("redis", {}))
    assert not render_env("prod").of_kind("Deployment")  # production runs no Redis of its own
    assert render_env("staging").one("Deployment", "-redis")


# ---- the Serve config for clusters outside Kubernetes ----


def test_standalone_serve_config_matches_the_local_config() -> None:
    path = ROOT / "deploy" / "serve" / "museserve-serve.yaml"
    serve = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text())).model_dump(exclude_unset=True)
    (app,) = serve["applications"]
    config = load_config(ROOT / app["args"]["config"])
    assert serve["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICER_FUNCTIONS
    assert serve["grpc_options"]["port"] == config.server.grpc_port
    deployments = {d["name"]: d for d in app["deployments"]}
    tiers = deployment_knobs(config)
    assert set(deployments) == set(tiers)
    for name, knobs in tiers.items():
        assert deployments[name]["num_replicas"] == knobs.num_replicas
        assert deployments[name]["max_ongoing_requests"] == knobs.max_ongoing_requests
        assert deployments[name]["ray_actor_options"]["num_cpus"] == knobs.num_cpus
