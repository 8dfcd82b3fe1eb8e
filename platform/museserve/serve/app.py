"""Builds the Serve application from the config: gateway -> preprocess -> model pools."""

from __future__ import annotations

import ray
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from museserve.config import DeploymentConfig, MuseServeConfig, PoolConfig, RoutingConfig, ServerConfig
from museserve.preprocess.pool_model import check_pools
from museserve.serve.autoscaling_options import Tier, check_scale_to_zero, serve_autoscaling_config
from museserve.serve.drain_board import create_drain_board, start_drain
from museserve.serve.gateway_ingress import GatewayIngress
from museserve.serve.model_pool_deployment import ModelPoolDeployment
from museserve.serve.preprocess_deployment import PreprocessDeployment

GRPC_SERVICER_FUNCTIONS = [
    "museserve.serve.grpc_proxy.add_chat_service",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


def ray_process_environment(config: MuseServeConfig) -> dict[str, str]:
    """Settings that Ray's own processes (proxies, replicas) read from their environment."""
    size = str(config.server.max_request_bytes)
    env = {
        "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": size,
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": size,
        # Ray's own per-replica ingress servers (which throughput-optimized mode turns on)
        # hold a stopping gateway replica for a fixed 30 s and force-kill it at the end,
        # whatever is in flight; the gateway's direct gRPC server and drain replace them.
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    }
    if config.server.throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    return env


def init_local_ray(config: MuseServeConfig, *, log_to_driver: bool = False) -> None:
    """Starts a local Ray node whose processes carry `ray_process_environment`; this
    process keeps its own environment."""
    ray.init(
        include_dashboard=False,
        log_to_driver=log_to_driver,
        runtime_env={"env_vars": ray_process_environment(config)},
    )


GATEWAY_DEPLOYMENT = "gateway"
PREPROCESS_DEPLOYMENT = "preprocess"


def pool_deployment_name(pool: PoolConfig) -> str:
    """A pool's Serve deployment name; Serve configs (Helm's serveConfigV2) override options by it."""
    return f"pool-{pool.name}"


# Serve force-kills a stopping replica this long after the drain timeout.
SHUTDOWN_MARGIN_S = 5.0


def _options(
    name: str, d: DeploymentConfig, server: ServerConfig, tier: Tier, ttft_objective_s: float | None = None
) -> dict:
    options = {
        "name": name,
        "num_replicas": d.num_replicas,
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
        # A stopping replica first waits for its Serve-routed requests (checked every
        # wait loop), then runs its destructor (the gateway's drain: see GatewayIngress).
        # A scale-down stops replicas the same way: what they hold finishes first.
        "graceful_shutdown_wait_loop_s": 0.5,
        "graceful_shutdown_timeout_s": server.drain_timeout_s + SHUTDOWN_MARGIN_S,
    }
    if d.autoscaling is not None:  # Serve refuses num_replicas beside an autoscaling config
        del options["num_replicas"]
        options["autoscaling_config"] = serve_autoscaling_config(d.autoscaling, tier, d.num_replicas, ttft_objective_s)
    return options


def pool_options(pool: PoolConfig, server: ServerConfig) -> dict:
    """A pool's deployment options, its router included."""
    return _options(pool_deployment_name(pool), pool.deployment, server, "pool", pool.admission.ttft_objective_s) | {
        "request_router_config": pool_router_config(pool)
    }


PREFIX_ROUTER = "museserve.serve.prefix_router.PrefixCacheRouter"


def pool_router_config(pool: PoolConfig) -> RequestRouterConfig:
    """How every handle to the pool picks a replica (`pool.routing`), and how often replicas
    report their load (for routing and for the gateway's admission); the A/B candidate and
    mirror pools are pools of their own, each with its own router."""
    routing = pool.routing
    return RequestRouterConfig(
        request_router_class=PREFIX_ROUTER,
        request_router_kwargs={
            "pool": pool.name,
            "by_prefix": pool.routes_by_prefix,
            "block_size": pool.engine.block_size,
            "min_hit_tokens": routing.min_hit_tokens,
            "max_load_gap": routing.max_load_gap,
            "kv_saturation": routing.kv_saturation,
        },
        request_routing_stats_period_s=routing.stats_period_s,
        request_routing_stats_timeout_s=max(routing.stats_period_s * 5, 5.0),
    )


# What only the routers read (through `pool_router_config`, which Serve updates in place).
ROUTER_ONLY = ("min_hit_tokens", "max_load_gap", "kv_saturation", "stats_period_s")


def replica_view(pool: PoolConfig) -> PoolConfig:
    """What a model replica is given: its pool without the settings only the gateway, the
    routers or Serve's controller read (A/B split, mirroring, the routing choice, autoscaling),
    so moving a canary share or tuning the balance threshold does not roll the pool's replicas."""
    defaults = RoutingConfig()
    routing = pool.routing.model_copy(update={name: getattr(defaults, name) for name in ROUTER_ONLY})
    deployment = pool.deployment.model_copy(update={"autoscaling": None})
    return pool.model_copy(update={"ab": None, "mirror": None, "routing": routing, "deployment": deployment})


def build_app(config: MuseServeConfig, log_level: str = "INFO") -> Application:
    """`config` with its pools checked against their checkpoints (`check_pools`: what each pool
    serves, from its checkpoint), so every tier routes and validates by the same modes."""
    config = check_pools(config)
    check_scale_to_zero(config)
    pools = {pool.name: bind_pool(pool, config, log_level) for pool in config.pools}
    preprocess = PreprocessDeployment.options(
        **_options(PREPROCESS_DEPLOYMENT, config.preprocess.deployment, config.server, "preprocess")
    ).bind(config, log_level)
    return GatewayIngress.options(
        **_options(GATEWAY_DEPLOYMENT, config.gateway.deployment, config.server, "gateway")
    ).bind(config, preprocess, pools, log_level)


def bind_pool(pool: PoolConfig, config: MuseServeConfig, log_level: str = "INFO") -> Application:
    """One pool's deployment, bound; also an application of its own (tests and benchmarks of
    one pool)."""
    return ModelPoolDeployment.options(**pool_options(pool, config.server)).bind(
        replica_view(pool), config.preprocess.media, config.preprocess.tokenizer, log_level
    )


def start_serve(config: MuseServeConfig) -> None:
    """Starts the Serve proxies on the configured ports (Ray must be initialised)."""
    serve.start(
        http_options={"host": config.server.http_host, "port": config.server.http_port},
        grpc_options={
            "port": config.server.grpc_port,
            "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS,
            "request_timeout_s": config.server.request_timeout_s,
        },
    )


def run_app(config: MuseServeConfig, log_level: str = "INFO") -> None:
    """Deploys the app from this process, which then owns its drain board (`drain_app`)."""
    start_serve(config)
    create_drain_board(config.app_name)
    serve.run(build_app(config, log_level), name=config.app_name, route_prefix="/")


def drain_app(config: MuseServeConfig) -> None:
    """Stops an app started by `run_app` without losing a request: the gateways start
    draining at once (new requests: UNAVAILABLE), then the app is deleted, which lets every
    replica finish what it holds (see `_options`), then Serve shuts down. Returns when all
    of it has stopped."""
    start_drain(config.app_name)
    serve.delete(config.app_name, _blocking=True)
    serve.shutdown()
