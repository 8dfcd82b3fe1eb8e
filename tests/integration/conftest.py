"""One real local Ray cluster with the museserve app for the whole integration session."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from museserve.client import ChatClient
from museserve.config import MuseServeConfig, load_config, parse_config
from museserve.gateway.identity import key_digest
from tests.redis_server import RedisServer
from tests.support import free_port, start_local_app

CONTEXT_LENGTH = 2048
MAX_IMAGE_BYTES = 64 << 10
MAX_REQUEST_BYTES = 2 << 20

# API keys of the session app, by what their tier lets them do. Only hashes go in config.
TEST_KEY = "sk-test-unlimited"  # tenant "tester", tier default: no rate limits
PROBE_KEY = "sk-test-probe"  # tenant "probe": 50 requests at once, then 1 per minute
METERED_KEY = "sk-test-metered"  # tenant "metered": 1 token per minute after a 400-token burst
BULK_KEY = "sk-test-bulk"  # tenant "bulk": may fill only 10% of a pool's in-flight bound
LIMITED_KEY = "sk-test-limited"  # tenant "limited": 2 requests at once, then 1 per minute (OpenAI API tests)
DIRECT_LIMITED_KEY = "sk-test-direct-limited"  # tenant "direct-limited", tier "limited" (direct ingress tests)
AB_POOL, CANDIDATE_POOL = "muse-ab", "muse-cand"
REAL_POOL = "smollm2-135m"  # the shipped config's real model (tests/integration/test_real_model.py)
AB_SHARE, MIRROR_FRACTION = 0.5, 0.3
ROUTED_POOL, ROUTED_REPLICAS = "muse-routed", 3  # routed by prefix (tests/integration/test_prefix_routing.py)
ROUTING_PERIOD_S = 0.5  # its replicas publish their KV events this often
# LoRA adapters of the real pool, in a store directory (tests/integration/test_adapters.py): any
# tenant of the default tier may use them; tenant "probe" may use none, tenant "limited" only the first.
# The routed pool (muse-tiny's shapes) has a store of its own, for adapter-affinity routing.
ADAPTERS = ("support", "sales")
ROUTED_ADAPTER = "routed-support"


def _tiers() -> dict:
    return {
        "default": {"priority": 1},
        "probe": {"priority": 1, "tenant": {"requests_per_minute": 1, "request_burst": 50}},
        "metered": {"priority": 1, "tenant": {"tokens_per_minute": 1, "token_burst": 400}},
        "bulk": {"priority": 2, "admission_share": 0.1},
        "limited": {"priority": 1, "tenant": {"requests_per_minute": 1, "request_burst": 2}},
    }


def _small_pool(name: str, **extra) -> dict:
    return {
        "name": name,
        "max_in_flight": 64,
        "engine": {
            "context_length": CONTEXT_LENGTH,
            "max_output_tokens": 256,
            "default_max_output_tokens": 8,
            "stream_interval_ms": 0,
            "kv_cache_bytes": 16 << 20,
        },
        "deployment": {"max_ongoing_requests": 160, "num_cpus": 0},
    } | extra


def adapter_stores(root: Path) -> dict[str, Path]:
    """PEFT-format adapter stores under `root`, by pool: the real pool's checkpoint's `ADAPTERS`,
    and the routed pool's (muse-tiny) `ROUTED_ADAPTER`."""
    from museserve.checkpoint import read_checkpoint
    from museserve.model.config import MuseConfig
    from tests.lora_support import write_adapter
    from tests.real_model import SMOLLM2_GGUF

    arch = MuseConfig.from_hf_dict(read_checkpoint(SMOLLM2_GGUF, "gguf").hf_config)
    targets = ("q_proj", "v_proj", "down_proj")
    for seed, name in enumerate(ADAPTERS):
        write_adapter(root / REAL_POOL / name, arch, rank=8, seed=seed, targets=targets, scale=0.05)
    write_adapter(root / ROUTED_POOL / ROUTED_ADAPTER, MuseConfig.named("tiny", vocab_size=1), rank=4, seed=0)
    return {REAL_POOL: root / REAL_POOL, ROUTED_POOL: root / ROUTED_POOL}


def integration_config(redis_url: str, adapters: dict[str, Path] | None = None) -> MuseServeConfig:
    """The shipped local config with free ports, a small context window, API keys, Redis,
    muse-tiny first and the default, the real model beside it, and two more pools for A/B
    and mirroring."""
    data = load_config().model_dump(mode="json")
    shipped = {p["name"]: p for p in data["pools"]}
    real = shipped[REAL_POOL]
    real["engine"].update(context_length=CONTEXT_LENGTH, max_output_tokens=1024, stream_interval_ms=0,
                          kv_cache_bytes=96 << 20)  # fmt: skip
    adapters = adapters or {}
    if REAL_POOL in adapters:
        real["lora"] = {"directory": str(adapters[REAL_POOL]), "max_loaded_adapters": 2}
    data["pools"] = [shipped["muse-tiny"], real]
    data["server"].update(
        grpc_port=free_port(),
        http_port=free_port(),
        direct_grpc_port=free_port(),
        request_timeout_s=60,
        max_request_bytes=MAX_REQUEST_BYTES,
    )
    data["preprocess"]["media"]["max_image_bytes"] = MAX_IMAGE_BYTES
    keys = [
        (TEST_KEY, "tester", "default"),
        (PROBE_KEY, "probe", "probe"),
        (METERED_KEY, "metered", "metered"),
        (BULK_KEY, "bulk", "bulk"),
        (LIMITED_KEY, "limited", "limited"),
        (DIRECT_LIMITED_KEY, "direct-limited", "limited"),
    ]
    data["gateway"].update(
        auth="api_key",
        api_keys=[{"sha256": key_digest(k), "tenant": t, "tier": tier} for k, t, tier in keys],
        tiers=_tiers(),
        redis={"url": redis_url, "timeout_ms": 1000, "on_unavailable": "fail_open"},
        default_model="muse-tiny",
        routes={},
        tenants={"probe": {"adapters": []}, "limited": {"adapters": [f"{REAL_POOL}:{ADAPTERS[0]}"]}},
    )
    pool = data["pools"][0]
    pool["engine"].update(
        context_length=CONTEXT_LENGTH, max_output_tokens=1024, default_max_output_tokens=32, stream_interval_ms=0
    )
    mirror = {"candidate": CANDIDATE_POOL, "fraction": MIRROR_FRACTION, "timeout_s": 30, "content": "outputs"}
    data["pools"] += [
        _small_pool(AB_POOL, ab={"candidate": CANDIDATE_POOL, "share": AB_SHARE}, mirror=mirror),
        _small_pool(
            CANDIDATE_POOL, modes=["instant", "thinking"], model={"size": "tiny", "load_format": "dummy", "seed": 1}
        ),
        _small_pool(
            ROUTED_POOL,
            modes=["instant"],
            deployment={"num_replicas": ROUTED_REPLICAS, "max_ongoing_requests": 160, "num_cpus": 0},
            routing={"stats_period_s": ROUTING_PERIOD_S, "min_hit_tokens": 16},
            lora={"directory": str(adapters[ROUTED_POOL])} if ROUTED_POOL in adapters else {},
        ),
    ]
    # These tests send bursts to check other things (the hard cap, tier shares, real-model
    # outputs) on two shared cores: admission from the live state would refuse some of them.
    # It has tests of its own (tests/unit/test_live_admission.py, tests/chaos).
    for pool in data["pools"]:
        pool["admission"] = {**pool.get("admission", {}), "policy": "static"}
    return parse_config(data, source="integration config")


class _SessionApp:
    """The one Redis and Ray app of a pytest session, shared by every test folder that needs
    it (tests/integration, tests/fuzz): started by the first user, stopped after the last."""

    users = 0
    stack: ExitStack | None = None
    redis: RedisServer | None = None
    config: MuseServeConfig | None = None


@contextmanager
def shared_app() -> Iterator[tuple[MuseServeConfig, RedisServer]]:
    import ray

    if _SessionApp.users == 0:
        with ExitStack() as stack:
            redis = stack.enter_context(RedisServer())
            stack.callback(ray.shutdown)
            store = Path(tempfile.mkdtemp(prefix="museserve-adapters-"))
            stack.callback(shutil.rmtree, store, ignore_errors=True)
            config = integration_config(redis.url, adapter_stores(store))
            start_local_app(config)
            _SessionApp.stack, _SessionApp.redis, _SessionApp.config = stack.pop_all(), redis, config
    _SessionApp.users += 1
    try:
        assert _SessionApp.config is not None and _SessionApp.redis is not None
        yield _SessionApp.config, _SessionApp.redis
    finally:
        _SessionApp.users -= 1
        if _SessionApp.users == 0 and _SessionApp.stack is not None:
            _SessionApp.stack.close()
            _SessionApp.stack = _SessionApp.redis = _SessionApp.config = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with shared_app() as (_, redis):
        yield redis


@pytest.fixture(scope="session")
def app_config() -> Iterator[MuseServeConfig]:
    with shared_app() as (config, _):
        yield config


@pytest.fixture(scope="session")
def grpc_address(app_config: MuseServeConfig) -> str:
    return f"127.0.0.1:{app_config.server.grpc_port}"


def key_client(address: str, key: str, user: str = "tester") -> ChatClient:
    return ChatClient(address, metadata=[("authorization", f"Bearer {key}"), ("x-user-id", user)])


@pytest.fixture(scope="session")
def direct_grpc_address(app_config: MuseServeConfig) -> str:
    """The gateway replica's own gRPC server (no Ray Serve proxy)."""
    return f"127.0.0.1:{app_config.server.direct_grpc_port}"


@pytest.fixture
def client(grpc_address: str) -> Iterator[ChatClient]:
    c = key_client(grpc_address, TEST_KEY)
    yield c
    c.close()


@pytest.fixture(scope="session")
def pool_handle(app_config: MuseServeConfig):
    """A handle to the model pool deployment, to observe the replica itself."""
    from ray import serve

    return serve.get_deployment_handle(f"pool-{app_config.pools[0].name}", app_name=app_config.app_name)


def exported_counters(prefix: str, pool: str) -> dict[str, float]:
    """The values Ray's metrics agent on this node exports for `pool`'s metrics named `prefix`...,
    summed over their other labels (replicas, adapters, positions)."""
    import urllib.request

    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(prefix) and f'model="{pool}"' in line:
            name = line.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values
