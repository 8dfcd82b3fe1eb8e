"""The API contract: committed stubs match `make proto`, and every element is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTOS = sorted(PROTO_DIR.glob("museserve/v1/*.proto"))
STUB_DIR = ROOT / "platform"

DECLARATION = re.compile(
    r"^\s*(rpc\s+\w+"  # an RPC
    r"|message\s+\w+|enum\s+\w+|oneof\s+\w+"  # a type or a oneof
    r"|(optional\s+|repeated\s+)?[\w.]+\s+\w+\s*=\s*\d+\s*;"  # a field
    r"|[A-Z][A-Z0-9_]*\s*=\s*\d+\s*;)"  # an enum value
)


def test_there_is_a_proto():
    assert PROTOS, "no proto files under proto/museserve/v1"


def test_committed_stubs_equal_freshly_generated_ones(tmp_path: Path):
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
    ]
    assert protoc.main(args + [str(p) for p in PROTOS]) == 0
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    stale = [str(rel) for rel in generated if (STUB_DIR / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"stubs are stale, run `make proto`: {stale}"


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_every_rpc_message_field_and_value_has_a_doc_comment(proto: Path):
    lines = proto.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if not DECLARATION.match(line):
            continue
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not previous.startswith("///"):
            undocumented.append(f"{proto.name}:{i + 1}: {line.strip()}")
    assert not undocumented, "missing /// comments:\n" + "\n".join(undocumented)
