"""The one place a Redis client is built: a single node or a Redis Cluster, by URL scheme.

`redis://` and `rediss://` (and `unix://`) name one server. `redis+cluster://` and
`rediss+cluster://` name a cluster by one or more startup nodes, comma-separated
(`redis+cluster://user:pass@10.0.0.1:6379,10.0.0.2:6379`); the client reads the slot map
from the first that answers and follows MOVED and ASK itself.

Every caller (rate limiter, API key lookup, stored conversations, mirror sink) gets its
client here, with the timeouts and pool size it asks for, so a cluster is one URL away
for all of them. What must stay true on a cluster: every multi-key command keeps its keys
in one slot, which the callers do with hash tags (`{<account>}`, `{<tenant>}`, `{g<k>}`).
"""

from __future__ import annotations

import zlib
from urllib.parse import unquote, urlsplit

import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
AnyRedis = Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def _cluster_kwargs(url: str) -> dict:
    """Startup nodes and credentials of a `redis+cluster://` URL."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes: list[tuple[str, int]] = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "6379")
        nodes.append((name.strip("[]"), int(port or 6379)))
    if not nodes or not nodes[0][0]:
        raise ValueError(f"no startup node in {url!r}")
    return {
        "nodes": nodes,
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "ssl": CLUSTER_SCHEMES[parts.scheme] == "rediss",
    }


def build_client(url: str, *, timeout_s: float, max_connections: int = 64) -> AnyRedis:
    """An asyncio client for `url`. Calls beyond `max_connections` (per node on a cluster)
    wait up to `timeout_s` for a free connection instead of failing; one retry on a fresh
    connection covers a connection the server dropped on restart, and on a cluster a
    redirect after failover."""
    if is_cluster_url(url):
        kw = _cluster_kwargs(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in kw["nodes"]],
            username=kw["username"],
            password=kw["password"],
            ssl=kw["ssl"],
            # A master that is down leaves its slots uncovered; the others keep serving theirs.
            require_full_coverage=False,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis(connection_pool=pool)


def build_sync_client(url: str, *, timeout_s: float) -> redis.Redis | SyncRedisCluster:
    """A blocking client for command-line tools (the mirror report)."""
    if is_cluster_url(url):
        kw = _cluster_kwargs(url)
        return SyncRedisCluster(
            startup_nodes=[SyncClusterNode(host, port) for host, port in kw["nodes"]],
            username=kw["username"],
            password=kw["password"],
            ssl=kw["ssl"],
            require_full_coverage=False,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def shard_of(client: AnyRedis, key: str) -> str:
    """Which server answers for `key`: its cluster node's `host:port`, or the slot while the
    client has no slot map yet; "" for a single node (one shard)."""
    if not isinstance(client, RedisCluster):
        return ""
    slot = client.keyslot(key)
    nodes = client.nodes_manager.slots_cache.get(slot)
    return nodes[0].name if nodes else f"slot {slot}"


def group_of(request_id: str, groups: int) -> int:
    """The mirror stream group of a record: stable across replicas and restarts."""
    return zlib.crc32(request_id.encode()) % groups


async def close_client(client: AnyRedis) -> None:
    await client.aclose()
    if isinstance(client, Redis):
        await client.connection_pool.disconnect()
