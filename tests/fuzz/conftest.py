"""The fuzz tests run against the same session app as tests/integration (one Ray app per
pytest session, whichever folder starts it). `MUSESERVE_FUZZ_CASES` is the total number of
generated cases across the gRPC and HTTP fuzz tests; each test takes its share."""

from __future__ import annotations

import os

import pytest

from museserve.config import MuseServeConfig

# The session app's fixtures, shared with tests/integration (pytest takes fixtures a conftest imports).
from tests.integration.conftest import app_config, direct_grpc_address, grpc_address  # noqa: F401

# Measured on a 2-core machine: `make fuzz` (MUSESERVE_FUZZ_CASES=10000: 4000 gRPC requests,
# 3000 raw OpenAI bodies, 3000 schemathesis cases, then the fixed corpus) passed in 4 min 13 s
# wall, ~25 s of it starting the app; the gRPC cases took 6-28 ms each. The default 240 take
# under a minute.
DEFAULT_CASES = 240


def fuzz_cases(share: float) -> int:
    """This test's share of MUSESERVE_FUZZ_CASES, at least 1."""
    total = int(os.environ.get("MUSESERVE_FUZZ_CASES", DEFAULT_CASES))
    return max(1, round(total * share))


@pytest.fixture(scope="session")
def http_base(app_config: MuseServeConfig) -> str:  # noqa: F811 (the imported fixture, as a parameter)
    return f"http://127.0.0.1:{app_config.server.http_port}"
