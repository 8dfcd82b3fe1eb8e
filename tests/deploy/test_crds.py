"""The chart's custom resources against their CRDs (copies in ../shared/crds, absent from
some clones: those tests skip), and the Go-to-Python regex rewrite that lets jsonschema
read the CRD schemas."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest

from tests.deploy.chart_render import ENVIRONMENTS, render_env
from tests.deploy.crds import CRD_DIR, go_pattern, is_custom, validate_custom_resource

no_crds = pytest.mark.skipif(not CRD_DIR.is_dir(), reason=f"no CRD copies at {CRD_DIR}")


@no_crds
@pytest.mark.parametrize("env", list(ENVIRONMENTS))
def test_custom_resources_match_their_crds(env: str) -> None:
    custom = [o for o in render_env(env).objects if is_custom(o)]
    for obj in custom:
        validate_custom_resource(obj)
    assert {o["kind"] for o in custom} == {"RayService", "ServiceMonitor", "PrometheusRule"}


@no_crds
@pytest.mark.parametrize(("strategy", "valid"), [("ABORT", True), ("warn", True), ("", True), ("maybe", False)])
def test_crd_patterns_apply_as_the_api_server_would(strategy: str, valid: bool) -> None:
    """The PrometheusRule CRD's `^(?i)(abort|warn)?$` (Go syntax) is enforced, not skipped."""
    rule = copy.deepcopy(render_env("defaults").one("PrometheusRule"))
    rule["spec"]["groups"][0]["partial_response_strategy"] = strategy
    if valid:
        validate_custom_resource(rule)
    else:
        with pytest.raises(jsonschema.ValidationError, match="does not match"):
            validate_custom_resource(rule)


@pytest.mark.parametrize(
    ("go", "matches", "misses"),
    [
        # prometheus-operator's partial_response_strategy: a flag after `^`, refused by `re` as it is
        (r"^(?i)(abort|warn)?$", ["", "abort", "WARN", "Abort"], ["x", "abortx"]),
        # in Go a flag holds to the end of its group, across `|`
        (r"a(?i)b|c", ["ab", "aB", "C"], ["Ab"]),
        (r"(x(?i)y|z)w", ["xYw", "Zw"], ["XYw", "zW"]),
        (r"^[]a]+\z", ["]a]"], ["]\n", "b"]),
        (r"^[^]a](?:q)(?P<n>r)$", ["bqr"], ["]qr", "aqr"]),
        (r"^(http|https)://.+$", ["https://x"], ["ftp://x", "https://x\n"]),  # Go's `$`: the end of the text
        (r"(?m)^a$", ["b\na\nc"], ["ab"]),
        (r"^\d+$", ["42"], ["\u0664\u0662"]),  # Go's classes are ASCII
    ],
)
def test_go_patterns_read_the_same_in_python(go: str, matches: list[str], misses: list[str]) -> None:
    python = re.compile(go_pattern(go))
    assert [s for s in matches if not python.search(s)] == []
    assert [s for s in misses if python.search(s)] == []


def test_go_ungreedy_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="ungreedy"):
        go_pattern(r"a(?U)b+")
