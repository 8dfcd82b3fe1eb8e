"""The staging Redis as a cluster: a StatefulSet of masters, the Job that forms it, the URL
the gateways get, and the network paths a cluster needs."""

from __future__ import annotations

import kubernetes_validate

from museserve.gateway.redis_client import build_client
from tests.deploy.chart_render import KUBE_VERSION, Rendered, env_values, render, with_change


def clustered(masters: int = 3) -> Rendered:
    values = with_change(env_values("staging"), "redis.embedded.cluster", {"enabled": True, "masters": masters})
    return render(values)


def test_a_cluster_is_a_statefulset_formed_by_a_hook_job() -> None:
    rendered = clustered(masters=4)
    (nodes,) = rendered.of_kind("StatefulSet")
    assert nodes["spec"]["replicas"] == 4 and nodes["spec"]["serviceName"] == "museserve-redis-nodes"
    args = nodes["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--cluster-enabled") + 1] == "yes"
    assert args[args.index("--cluster-require-full-coverage") + 1] == "no"
    assert not [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"] == "museserve-redis"]
    (setup,) = rendered.of_kind("Job")
    assert setup["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    env = {e["name"]: e["value"] for e in setup["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NODES"].split() == [f"museserve-redis-{i}.museserve-redis-nodes" for i in range(4)]
    for obj in (nodes, setup):
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_the_gateways_get_a_cluster_url_their_client_reads() -> None:
    (secret,) = [s for s in clustered().of_kind("Secret") if s["metadata"]["name"] == "museserve-redis"]
    url = secret["stringData"]["url"]
    assert url == "redis+cluster://" + ",".join(f"museserve-redis-{i}.museserve-redis-nodes:6379" for i in range(3))
    client = build_client(url, timeout_s=0.1, max_connections=4)
    assert type(client).__name__ == "RedisCluster"


def test_the_nodes_reach_each_other_on_the_bus() -> None:
    policy = next(p for p in clustered().of_kind("NetworkPolicy") if p["metadata"]["name"].endswith("-redis"))
    ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert ports == {6379, 16379}
    components = {
        selector["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for rule in policy["spec"]["ingress"]
        for selector in rule["from"]
        if "app.kubernetes.io/component" in selector["podSelector"]["matchLabels"]
    }
    assert components == {"redis", "redis-setup"}


def test_a_single_redis_stays_the_default() -> None:
    rendered = render(env_values("staging"))
    assert not rendered.of_kind("StatefulSet") and not rendered.of_kind("Job")
