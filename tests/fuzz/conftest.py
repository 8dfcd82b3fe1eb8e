"""The fuzz tests run against the same session app as tests/integration (one Ray app per
pytest session, whichever folder starts it). `MUSESERVE_FUZZ_CASES` is the total number of
generated cases across the gRPC and HTTP fuzz tests; each test takes its share."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from museserve.config import MuseServeConfig
from tests.integration.conftest import shared_app

# Measured on a 2-core machine shared with other Ray runs (load ~13): the default 240 cases
# plus the fixed corpus (117 tests) take ~135 s wall, ~40 s of it starting the app; on an
# idle machine well under a minute of fuzzing. `make fuzz` (10000) is extrapolated, not
# measured: at ~0.3-0.5 s per case, about 1 to 1.5 hours.
DEFAULT_CASES = 240


def fuzz_cases(share: float) -> int:
    """This test's share of MUSESERVE_FUZZ_CASES, at least 1."""
    total = int(os.environ.get("MUSESERVE_FUZZ_CASES", DEFAULT_CASES))
    return max(1, round(total * share))


@pytest.fixture(scope="session")
def app_config() -> Iterator[MuseServeConfig]:
    with shared_app() as (config, _):
        yield config


@pytest.fixture(scope="session")
def grpc_address(app_config: MuseServeConfig) -> str:
    return f"127.0.0.1:{app_config.server.grpc_port}"


@pytest.fixture(scope="session")
def direct_grpc_address(app_config: MuseServeConfig) -> str:
    return f"127.0.0.1:{app_config.server.direct_grpc_port}"


@pytest.fixture(scope="session")
def http_base(app_config: MuseServeConfig) -> str:
    return f"http://127.0.0.1:{app_config.server.http_port}"
