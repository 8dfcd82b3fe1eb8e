"""Assembles a `Gateway` from config: identity, quota, mirroring, all sharing one view of
Redis when it is configured, and saying at start what runs without it."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from museserve.config import MuseServeConfig
from museserve.gateway.conversations import build_conversations
from museserve.gateway.gateway import Gateway, PoolClient, PreprocessClient
from museserve.gateway.identity import Authenticator, redis_key_lookup
from museserve.gateway.inline_preprocess import InlineTextPreprocess
from museserve.gateway.live_admission import LiveAdmission
from museserve.gateway.mirror import Mirror
from museserve.gateway.mirror_sinks import build_mirror_sink
from museserve.gateway.observer import GatewayObserver
from museserve.gateway.pool_loads import POOL_LOADS
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.gateway.redis_client import is_cluster_url
from museserve.gateway.redis_ratelimit import RedisRateLimiter

logger = logging.getLogger(__name__)


def build_gateway(
    config: MuseServeConfig,
    preprocess: PreprocessClient,
    pools: Mapping[str, PoolClient],
    observer: GatewayObserver,
) -> Gateway:
    gateway_config = config.gateway
    redis = gateway_config.redis
    if gateway_config.inline_text_preprocess:
        preprocess = InlineTextPreprocess(config, preprocess)
    limiter = RedisRateLimiter.from_config(redis) if redis.url is not None else LocalRateLimiter()
    quota = QuotaGuard(gateway_config, limiter=limiter, on_backend_error=lambda: observer.redis_error("ratelimit"))
    lookup = None
    if isinstance(limiter, RedisRateLimiter) and gateway_config.auth == "api_key":
        lookup = redis_key_lookup(limiter.client, redis.key_prefix)
    authenticator = Authenticator(gateway_config, lookup)
    mirror = None
    if any(p.mirror is not None for p in config.pools):
        client = limiter.client if isinstance(limiter, RedisRateLimiter) else None
        mirror = Mirror(preprocess, pools, build_mirror_sink(gateway_config, client), observer)
    if gateway_config.auth == "none":
        logger.warning("auth is none: every caller is tenant 'anonymous' (use only on a trusted network)")
    where = "this replica's memory (not shared across replicas)"
    if redis.url:
        where = "Redis Cluster" if is_cluster_url(redis.url) else "Redis"
    logger.info("rate limits kept in %s; mirroring %s", where, "on" if mirror else "off")
    live = LiveAdmission(config.pools, gateway_config, POOL_LOADS)  # what this process's pool routers receive
    conversations = build_conversations(gateway_config.conversations, redis.url, redis.key_prefix)
    return Gateway(
        config, preprocess, pools, authenticator=authenticator, quota=quota, mirror=mirror, observer=observer,
        live=live, conversations=conversations,
    )  # fmt: skip
