"""The chart with museserve's own autoscaling policies (`deployment.autoscaling`): the config
file carries them to build_app, and the Serve config leaves build_app's replica options alone."""

from __future__ import annotations

from pathlib import Path

from ray.serve.schema import ServeDeploySchema

from museserve.serve.app import GATEWAY_DEPLOYMENT, pool_deployment_name, pool_options
from tests.deploy.chart_render import render, serve_config, with_change
from tests.deploy.test_chart import loaded_config

SCALING = {"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 20, "metrics_push_interval_s": 1.5}


def test_policies_pass_through_the_chart(tmp_path: Path) -> None:
    values = with_change({}, "pools.muse-tiny.deployment", {"num_replicas": 1, "max_ongoing_requests": 160,
                                                                 "num_cpus": 1, "num_gpus": 0, "autoscaling": SCALING})  # fmt: skip
    values = with_change(values, "config.gateway.deployment.autoscaling", SCALING)
    rendered = render(values)
    config = loaded_config(rendered, tmp_path, values)
    tiny = next(p for p in config.pools if p.name == "muse-tiny")
    assert tiny.deployment.autoscaling is not None and tiny.deployment.autoscaling.max_replicas == 3
    assert config.gateway.deployment.autoscaling is not None

    serve = serve_config(rendered)
    ServeDeploySchema.model_validate(serve)
    (app,) = serve["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    for name in (pool_deployment_name(tiny), GATEWAY_DEPLOYMENT):
        d = deployments[name]
        assert "num_replicas" not in d and "autoscaling_config" not in d, name  # build_app's stand
    fixed = next(p for p in config.pools if p.name != "muse-tiny")
    assert deployments[pool_deployment_name(fixed)]["num_replicas"] == fixed.deployment.num_replicas

    options = pool_options(tiny, config.server)
    assert options["autoscaling_config"].max_replicas == 3
    assert options["autoscaling_config"].metrics_interval_s == 1.5
