"""`museserve ops`: the patches as pure functions of chart-shaped objects, the status text,
and the one-line answer (exit code 2) when there is no cluster, with the real kubernetes client."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from museserve.cli import main
from museserve.ops.commands import apply_changes
from museserve.ops.patches import DRAIN_LABEL, OpsError, canary_changes, drain_change, scale_change
from museserve.ops.status import status_lines
from tests.support import free_port

CONFIG_TEXT = "# Rendered by the museserve Helm chart (release r); edit the release's values, not this file.\n" + (
    yaml.safe_dump(
        {
            "app_name": "museserve",
            "pools": [{"name": "ab", "ab": {"candidate": "cand", "share": 0.1}}, {"name": "cand"}, {"name": "main"}],
        }
    )
)


def rayservice() -> dict:
    """What the chart renders (helm/museserve/templates/_config.tpl), trimmed."""
    deployments = [
        {"name": "gateway", "num_replicas": 1, "max_ongoing_requests": 1024},
        {"name": "preprocess", "num_replicas": 2},
        {"name": "pool-ab", "num_replicas": 2},
        {"name": "pool-main", "num_replicas": "auto", "autoscaling_config": {"min_replicas": 1, "max_replicas": 4}},
    ]
    args = {"config": "/etc/museserve/config/museserve.yaml", "config_sha256": hashlib.sha256(b"x").hexdigest()}
    serve = {"applications": [{"name": "museserve", "args": args, "deployments": deployments}]}
    return {"metadata": {"name": "museserve", "namespace": "llm"}, "spec": {"serveConfigV2": yaml.safe_dump(serve)}}


def patched_deployments(change) -> dict[str, dict]:
    config = yaml.safe_load(change.patch["spec"]["serveConfigV2"])
    return {d["name"]: d for d in config["applications"][0]["deployments"]}


def test_scale_sets_the_replicas_of_a_fixed_deployment_and_nothing_else() -> None:
    change = scale_change(rayservice(), "ab", replicas=4)
    after = patched_deployments(change)
    assert after["pool-ab"]["num_replicas"] == 4
    before = patched_deployments(scale_change(rayservice(), "ab", replicas=2))
    assert {k: v for k, v in after.items() if k != "pool-ab"} == {k: v for k, v in before.items() if k != "pool-ab"}
    changed = [line for line in change.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("---", "+++")]
    assert changed == ["-    num_replicas: 2", "+    num_replicas: 4"]
    assert scale_change(rayservice(), "ab", replicas=2).diff == ""
    assert patched_deployments(scale_change(rayservice(), "gateway", replicas=3))["gateway"]["num_replicas"] == 3


def test_scale_moves_the_bounds_of_an_autoscaled_deployment() -> None:
    change = scale_change(rayservice(), "main", max_replicas=8)
    assert patched_deployments(change)["pool-main"]["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8}
    with pytest.raises(OpsError, match="autoscales"):
        scale_change(rayservice(), "main", replicas=3)
    with pytest.raises(OpsError, match="max_replicas"):
        scale_change(rayservice(), "main", min_replicas=5)
    with pytest.raises(OpsError, match="fixed replica count"):
        scale_change(rayservice(), "ab", max_replicas=3)
    with pytest.raises(OpsError, match="at least 1"):
        scale_change(rayservice(), "ab", replicas=0)
    with pytest.raises(OpsError, match="pool-nope.*pool-main"):
        scale_change(rayservice(), "nope", replicas=1)


def test_canary_sets_the_share_and_the_digest_the_builder_waits_for() -> None:
    config_change, serve_change = canary_changes(rayservice(), {"data": {"museserve.yaml": CONFIG_TEXT}}, "ab", 0.25)
    new_text = config_change.patch["data"]["museserve.yaml"]
    assert new_text.startswith("# Rendered by the museserve Helm chart")
    pools = {p["name"]: p for p in yaml.safe_load(new_text)["pools"]}
    assert pools["ab"]["ab"] == {"candidate": "cand", "share": 0.25} and pools["main"] == {"name": "main"}
    args = yaml.safe_load(serve_change.patch["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["config_sha256"] == hashlib.sha256(new_text.encode()).hexdigest()
    assert "share: 0.25" in config_change.diff and "config_sha256" in serve_change.diff


def test_canary_refuses_what_the_config_cannot_take() -> None:
    configmap = {"data": {"museserve.yaml": CONFIG_TEXT}}
    with pytest.raises(OpsError, match="no A/B candidate"):
        canary_changes(rayservice(), configmap, "main", 0.5)
    with pytest.raises(OpsError, match="no pool 'nope'"):
        canary_changes(rayservice(), configmap, "nope", 0.5)
    with pytest.raises(OpsError, match="between 0 and 1"):
        canary_changes(rayservice(), configmap, "ab", 1.5)
    with pytest.raises(OpsError, match="no key"):
        canary_changes(rayservice(), {"data": {}}, "ab", 0.5)


def test_drain_takes_the_endpoints_away_and_undo_gives_them_back() -> None:
    service = {"spec": {"selector": {"app.kubernetes.io/component": "gateway"}}}
    drain = drain_change(service)
    assert drain.patch == {"spec": {"selector": {DRAIN_LABEL: "true"}}} and f"+  {DRAIN_LABEL}" in drain.diff
    assert drain_change(service, undo=True).diff == ""  # not drained: nothing to undo
    drained = {"spec": {"selector": {"app.kubernetes.io/component": "gateway", DRAIN_LABEL: "true"}}}
    assert drain_change(drained, undo=True).patch == {"spec": {"selector": {DRAIN_LABEL: None}}}


def test_apply_changes_patches_only_with_yes_and_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    sent: list[str] = []
    changes = [(label, scale_change(rayservice(), "ab", replicas=3), lambda p, lbl=label: sent.append(lbl))
               for label in ("first", "second")]  # fmt: skip
    assert apply_changes(changes, yes=False) == 0 and sent == []
    assert "pass --yes" in capsys.readouterr().out
    assert apply_changes(changes, yes=True) == 0 and sent == ["first", "second"]


def test_status_lists_conditions_applications_deployments_and_replicas() -> None:
    obj = rayservice()
    deployments = {"gateway": {"status": "HEALTHY"}, "pool-main": {"status": "UPDATING", "message": "starting"}}
    obj["status"] = {
        "serviceStatus": "Running",
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
        "activeServiceStatus": {
            "rayClusterName": "museserve-raycluster-abc",
            "rayClusterStatus": {"readyWorkerReplicas": 3, "desiredWorkerReplicas": 4},
            "applicationStatuses": {"museserve": {"status": "RUNNING", "serveDeploymentStatuses": deployments}},
        },
    }
    drained = {"metadata": {"name": "museserve-gateway"}, "spec": {"selector": {DRAIN_LABEL: "true"}}}
    text = "\n".join(status_lines(obj, drained))
    assert "RayService llm/museserve: Running" in text
    assert "condition Ready=True (NonZeroServeEndpoints)" in text
    assert "worker pods ready 3, desired 4" in text and "application museserve: RUNNING" in text
    assert "gateway: HEALTHY, replicas 1" in text
    assert "pool-main: UPDATING, replicas autoscaling 1-4 (starting)" in text
    assert "museserve-gateway: DRAINED" in text


def test_no_cluster_is_one_line_and_exit_code_2(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    for argv in (["ops", "status"], ["ops", "scale", "main", "--replicas", "2"], ["ops", "drain", "--yes"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("museserve ops: no Kubernetes cluster") and err.count("\n") == 1, err


def test_an_unreachable_api_server_is_one_line_and_exit_code_2(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "llm"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    assert main(["ops", "status", "--kubeconfig", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"museserve ops: cannot reach the Kubernetes API at {server}") and err.count("\n") == 1, err
