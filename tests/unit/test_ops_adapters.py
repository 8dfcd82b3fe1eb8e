"""`museserve ops adapters`: load and unload as patches of the pool deployment's user_config
(which Serve applies to every replica live), and the listing of what pools serve."""

from __future__ import annotations

import pytest
import yaml

from museserve.ops.adapters import adapters_change, adapters_lines
from museserve.ops.patches import OpsError
from tests.unit.test_ops import CONFIG_TEXT, patched_deployments, rayservice


def test_load_keeps_an_adapter_and_unload_disables_it() -> None:
    change = adapters_change(rayservice(), "main", load="health")
    assert patched_deployments(change)["pool-main"]["user_config"] == {"adapters": {"keep": ["health"], "disabled": []}}
    assert "+        keep:" in change.diff and "+        - health" in change.diff
    patched = {"spec": change.patch["spec"]}
    unloaded = patched_deployments(adapters_change(patched, "main", unload="health"))["pool-main"]
    assert unloaded["user_config"] == {"adapters": {"keep": [], "disabled": ["health"]}}
    others = patched_deployments(change)
    assert "user_config" not in others["pool-ab"] and "user_config" not in others["gateway"]
    assert adapters_change(patched, "main", load="health").diff == ""  # already kept


def test_bad_requests_are_refused() -> None:
    with pytest.raises(OpsError, match="no Serve deployment 'pool-nope'"):
        adapters_change(rayservice(), "nope", load="health")
    with pytest.raises(OpsError, match="is not an adapter name"):
        adapters_change(rayservice(), "main", load="../etc")
    with pytest.raises(OpsError, match="one adapter"):
        adapters_change(rayservice(), "main")


def test_list_shows_served_and_wished_adapters() -> None:
    config = yaml.safe_load(CONFIG_TEXT)
    config["pools"][2]["lora"] = {"adapters": [{"name": "health", "path": "/a/health"}], "directory": "/adapters"}
    configmap = {"data": {"museserve.yaml": yaml.safe_dump(config)}}
    loaded = {"spec": adapters_change(rayservice(), "main", load="shop").patch["spec"]}
    assert adapters_lines(loaded, configmap) == [
        "pool main: 8 slots per replica",
        "  listed: health",
        "  store: /adapters",
        "  kept loaded: shop",
        "  disabled: -",
    ]
    assert adapters_lines(rayservice(), {"data": {"museserve.yaml": CONFIG_TEXT}}) == ["no pool serves adapters"]
