"""The one configuration tree, read from YAML: see `tree.MuseServeConfig` for the root."""

from museserve.config.base import DeploymentConfig, Section, ServerConfig
from museserve.config.gateway import (
    ApiKey,
    ConversationsConfig,
    DegradeConfig,
    GatewayConfig,
    RateSpec,
    RedisConfig,
    RequestLimits,
    TenantConfig,
    TierConfig,
)
from museserve.config.pool import (
    ABSplit,
    AdmissionConfig,
    ContemplatingConfig,
    EngineConfig,
    MirrorConfig,
    ModelConfig,
    ParallelConfig,
    PoolConfig,
)
from museserve.config.preprocess import MediaLimits, PreprocessConfig
from museserve.config.routing import RoutingConfig
from museserve.config.tree import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Environment,
    MuseServeConfig,
    load_config,
    parse_config,
    read_environment,
)

__all__ = [
    "ABSplit",
    "AdmissionConfig",
    "ApiKey",
    "ConfigError",
    "ContemplatingConfig",
    "DegradeConfig",
    "DEFAULT_CONFIG_PATH",
    "DeploymentConfig",
    "EngineConfig",
    "Environment",
    "GatewayConfig",
    "MediaLimits",
    "MirrorConfig",
    "ModelConfig",
    "MuseServeConfig",
    "ParallelConfig",
    "PoolConfig",
    "PreprocessConfig",
    "RateSpec",
    "ConversationsConfig",
    "RedisConfig",
    "RequestLimits",
    "RoutingConfig",
    "Section",
    "ServerConfig",
    "TenantConfig",
    "TierConfig",
    "load_config",
    "parse_config",
    "read_environment",
]
