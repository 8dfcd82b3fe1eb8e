"""One real local Ray cluster with the museserve app for the whole integration session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from museserve.client import ChatClient
from museserve.config import MuseServeConfig, load_config, parse_config
from tests.support import free_port, start_local_app

CONTEXT_LENGTH = 2048
MAX_IMAGE_BYTES = 64 << 10
MAX_REQUEST_BYTES = 2 << 20


def integration_config() -> MuseServeConfig:
    """The shipped local config with free ports and a small context window."""
    data = load_config().model_dump(mode="json")
    data["server"].update(
        grpc_port=free_port(), http_port=free_port(), request_timeout_s=60, max_request_bytes=MAX_REQUEST_BYTES
    )
    data["preprocess"]["media"]["max_image_bytes"] = MAX_IMAGE_BYTES
    pool = data["pools"][0]
    pool["engine"].update(
        context_length=CONTEXT_LENGTH, max_output_tokens=1024, default_max_output_tokens=32, stream_interval_ms=0
    )
    return parse_config(data, source="integration config")


@pytest.fixture(scope="session")
def app_config() -> Iterator[MuseServeConfig]:
    import ray

    config = integration_config()
    try:
        start_local_app(config)
        yield config
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def grpc_address(app_config: MuseServeConfig) -> str:
    return f"127.0.0.1:{app_config.server.grpc_port}"


@pytest.fixture
def client(grpc_address: str) -> Iterator[ChatClient]:
    c = ChatClient(grpc_address, metadata=[("x-user-id", "tester")])
    yield c
    c.close()


@pytest.fixture(scope="session")
def pool_handle(app_config: MuseServeConfig):
    """A handle to the model pool deployment, to observe the replica itself."""
    from ray import serve

    return serve.get_deployment_handle(f"pool-{app_config.pools[0].name}", app_name=app_config.app_name)
