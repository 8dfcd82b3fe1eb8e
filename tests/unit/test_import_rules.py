"""The import rules of docs/architecture.md, checked on the module graph.

Every import of a `museserve` module (at module level or inside a function) is an edge from
its unit (the package, or the top-level module) to the imported unit. Each unit may import
only the units its rule lists, so the graph stays layered and free of cycles; a new unit
needs a rule. Separately, the tiers that never run a model import no torch and no engine."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import museserve

ROOT = Path(museserve.__file__).parent
BASE = {"domain", "errors", "messages", "logs", "metrics"}

# unit -> the units it may import, besides BASE (open to every unit outside BASE).
RULES: dict[str, set[str]] = {
    "domain": set(),
    "errors": set(),
    "messages": {"domain"},
    "logs": set(),
    "metrics": set(),
    "v1": set(),  # generated protobuf
    "checkpoint": set(),
    "model": {"checkpoint"},  # `model.config` is torch-free; the rest is the torch model
    "config": {"model"},  # model.config only: whether a parallel split fits, a context window's KV shape
    "preprocess": {"checkpoint", "config", "model"},
    "engine": {"config", "preprocess"},  # policy: never runner, structured, parallel, torch
    "structured": {"engine", "preprocess"},
    "runner": {"checkpoint", "config", "engine", "lora", "model", "preprocess", "structured"},
    "parallel": {"config", "engine", "model", "runner"},
    "replica": {"config", "engine", "lora", "parallel", "preprocess", "runner"},
    "modes": {"config", "preprocess"},
    "routing": {"engine"},  # the engine's block hashes and KV events only: no torch
    "lora": {"config", "model"},  # adapters checked against the base model's shapes, wrapped around its layers
    "gateway": {"config", "lora", "preprocess"},  # `lora.registry` only: which adapters a pool serves
    "voice": {"config", "engine", "gateway", "preprocess"},  # engine.media: the rows' byte size only
    "api": {"config", "gateway", "v1", "voice"},
    "mirror_report": {"gateway"},
    "client": {"v1"},
    "talk": {"client", "v1"},  # `museserve talk` and the speech streaming the load tester shares
    "ops": set(),
    "serve": {"api", "config", "gateway", "lora", "modes", "preprocess", "replica", "routing", "v1", "voice"},
    "cli": {"client", "config", "gateway", "mirror_report", "ops", "preprocess", "serve", "talk", "v1"},
}

# Modules that must import neither torch nor the engine, runner or model code.
LIGHT = ["museserve.config", "museserve.domain", "museserve.messages", "museserve.engine.plan"]
LIGHT_PACKAGES = ["gateway", "preprocess", "api", "modes", "routing", "voice"]
HEAVY = ("torch", "museserve.runner", "museserve.parallel", "museserve.structured", "museserve.model.muse")


def allowed(unit: str) -> set[str]:
    return RULES[unit] | (set() if unit in BASE else BASE)


def unit_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return parts[0].removesuffix(".py")


def import_edges() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the files that import it."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        unit = unit_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                target = name.split(".")[1] if name.startswith("museserve.") else None
                if target is not None and target != unit:
                    edges[unit][target].append(str(path.relative_to(ROOT)))
    return edges


def test_every_unit_imports_only_what_its_rule_allows() -> None:
    edges = import_edges()
    unknown = sorted(set(edges) - set(RULES))
    assert not unknown, f"units without an import rule: {unknown}"
    broken = []
    for unit, targets in edges.items():
        for target, files in targets.items():
            if target not in allowed(unit):
                broken.append(f"{unit} -> {target} ({', '.join(sorted(set(files)))})")
    assert not broken, "\n".join(broken)


def test_the_rules_form_no_cycle() -> None:
    """So the rules hold transitively: a unit reaches only what its rules' closure reaches."""
    state: dict[str, str] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for target in allowed(unit):
            assert state.get(target) != "open", f"cycle: {' -> '.join([*path, unit, target])}"
            if target not in state:
                visit(target, [*path, unit])
        state[unit] = "done"

    for unit in RULES:
        if unit not in state:
            visit(unit, [])


def test_config_gateway_and_preprocess_load_no_torch_and_no_engine() -> None:
    modules = list(LIGHT)
    for package in LIGHT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules.append(
                ".".join(("museserve", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
            )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"heavy modules loaded: {out}"
