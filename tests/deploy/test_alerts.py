"""The alert rules the chart ships: valid for Prometheus, and each one fires on a bad series
and stays quiet on a healthy one (`promtool test rules`, cases in prometheus-rules.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import allowed_metric_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "museserve" / "files" / "prometheus-rules.yaml"
RULE_TESTS = Path(__file__).with_name("prometheus-rules.test.yaml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not installed: run `make test` (it installs prometheus from apt), or `make promtool`")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_fires_and_stays_quiet_where_it_should() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_documented_and_tested() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in fired, f"{rule['alert']} has no promtool case where it fires"
    assert len({rule["alert"] for rule in rules}) == len(rules)


def test_every_rule_reads_exported_metrics() -> None:
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    unknown = {name for rule in rules for name in metric_names(rule["expr"])} - allowed_metric_names()
    assert unknown == set(), f"alerts read metrics nobody exports: {sorted(unknown)}"
