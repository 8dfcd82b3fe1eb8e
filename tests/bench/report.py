"""Writing a bench's JSON report."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: Path, report: dict) -> None:
    """`report` as indented JSON to `out` (its folder made if need be) and to stdout."""
    text = json.dumps(report, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)
