"""The CRDs of the custom resources the chart renders (KubeRay's RayService,
prometheus-operator's ServiceMonitor and PrometheusRule), read from copies kept outside the
repository, and their `openAPIV3Schema` made into what `jsonschema` checks the way the API
server would:

- closed: with strict field validation an object with declared properties takes no others
  (unless it preserves unknown fields);
- Go regexes: the API server evaluates `pattern` with Go's RE2, whose syntax and meaning
  differ from Python's `re` in places (`(?i)` after the start of a pattern, which `re`
  refuses; `$`; `\\z`). `jsonschema` checks a schema before using it (every pattern must
  compile in Python), so each pattern is rewritten to its Python equivalent (`go_pattern`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jsonschema
import yaml

from tests.deploy.chart_render import ROOT, Obj

CRD_DIR = ROOT.parent / "shared" / "crds"
CRD_GROUPS = ("ray.io", "monitoring.coreos.com")

Schema = dict[str, Any]


def is_custom(obj: Obj) -> bool:
    return obj["apiVersion"].split("/")[0] in CRD_GROUPS


def go_pattern(pattern: str) -> str:
    """`pattern` (Go RE2 syntax) as Python's `re` reads it, with the same matches.

    - An inline flag group `(?flags)` holds in Go from where it stands to the end of its
      enclosing group; Python takes such flags only at the very start, so each becomes a
      scoped group `(?flags:...)`, closed where the enclosing group or an alternative of it
      ends and reopened after each `|`.
    - Outside multi-line mode Go's `$` matches only at the end of the text, Python's also
      before a final newline: it becomes `\\Z`, as Go's `\\z` does.
    - Go's `\\d`, `\\w`, `\\s` and `\\b` are ASCII only: the pattern then runs in ASCII mode.
    - Ungreedy mode (`U`) has no Python equivalent and is refused."""
    if any("U" in flags.partition("-")[0] for flags in re.findall(r"\(\?([imsU-]+)[:)]", pattern)):
        raise ValueError(f"{pattern!r}: Go's ungreedy flag has no Python equivalent")
    out: list[str] = []
    groups = [_Group(multiline=False)]
    ascii_classes = False
    class_start: int | None = None  # len(out) where the members of a `[...]` class begin
    i = 0
    while i < len(pattern):
        char, group = pattern[i], groups[-1]
        if char == "\\":
            escape = pattern[i : i + 2]
            ascii_classes = ascii_classes or escape[1:] in set("dDwWsSbB")
            out.append("\\Z" if escape == "\\z" and class_start is None else escape)
            i += 2
            continue
        if class_start is not None:
            if char == "]" and len(out) > class_start:  # a `]` first in the class is a member
                class_start = None
            out.append(char)
        elif char == "[":
            out.append("[^" if pattern.startswith("[^", i) else "[")
            i += len(out[-1]) - 1
            class_start = len(out)
        elif bare := re.match(r"\(\?([imsU-]+)\)", pattern[i:]):  # `(?flags)`
            out.append(f"(?{bare[1]}:")
            group.scopes.append(bare[1])
            group.multiline = _multiline(bare[1], group.multiline)
            i += len(bare[0])
            continue
        elif char == "(":
            scoped = re.match(r"\(\?([imsU-]+):", pattern[i:])  # `(?flags:...)`
            groups.append(_Group(_multiline(scoped[1], group.multiline) if scoped else group.multiline))
            out.append(char)
        elif char == ")":
            out.append(")" * len(groups.pop().scopes) + char)
        elif char == "|" and group.scopes:
            out.append(")" * len(group.scopes) + "|" + "".join(f"(?{f}:" for f in group.scopes))
        elif char == "$" and not group.multiline:
            out.append("\\Z")
        else:
            out.append(char)
        i += 1
    out.append(")" * len(groups[0].scopes))
    return ("(?a)" if ascii_classes else "") + "".join(out)


@dataclass
class _Group:
    """An open group of a Go pattern: whether `$` ends a line there, and the flag groups
    opened in it (each a Python scoped group to close where it ends)."""

    multiline: bool
    scopes: list[str] = field(default_factory=list)


def _multiline(flags: str, before: bool) -> bool:
    on, _, off = flags.partition("-")
    return True if "m" in on else False if "m" in off else before


def api_server_schema(schema: Any) -> Any:
    """A CRD's openAPIV3Schema, closed as under strict field validation, patterns in Python syntax."""
    if isinstance(schema, dict):
        schema = {k: api_server_schema(v) for k, v in schema.items()}
        if isinstance(schema.get("pattern"), str):
            schema["pattern"] = go_pattern(schema["pattern"])
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [api_server_schema(v) for v in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> Schema | None:
    """The served version's schema of the CRD for this kind, None when no copy defines it."""
    group, version = api_version.split("/")
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB files
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
            return api_server_schema(served["schema"]["openAPIV3Schema"])
    return None


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    """A validator of the kind's CRD schema, the schema itself checked once (as
    jsonschema.validate does on every call: slow for KubeRay's 1 MB CRD)."""
    schema = crd_schema(api_version, kind)
    assert schema is not None, f"no CRD for {api_version} {kind} in {CRD_DIR}"
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_custom_resource(obj: Obj) -> None:
    """Raises jsonschema.ValidationError (the most relevant one) where `obj` breaks its CRD's schema."""
    error = jsonschema.exceptions.best_match(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj))
    if error is not None:
        raise error
