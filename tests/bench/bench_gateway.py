"""What the gateway tier costs a request, how many Redis calls it makes, and whether
mirroring to a slow candidate slows the primary.

One local Ray node, one app, one real redis-server, all in this run. The gateway checks
API keys, keeps rate limits in Redis (a tier whose user and tenant both have request and
token limits, set too high to ever refuse) and routes by mode.

- `gateway_overhead_ratio`: p50 latency of a short unary Chat (greedy, 1 output token)
  through the primary ingress for product services (gRPC client -> the gateway replica's
  own gRPC server on `server.direct_grpc_port` -> preprocess -> model pool), over the p50
  of a direct call to the same pool deployment: a DeploymentHandle from this process,
  `generate` with the equivalent PreparedRequest (built once with the Preprocessor; each
  call only gets a fresh id and deadline), its stream consumed.
  `gateway_overhead_ratio_via_ray_proxy`: the same through Ray Serve's gRPC proxy (client
  -> proxy -> gateway -> ...). The three take turns in a rotating order, so all see the
  same load. Cheap probes in the same loop split the difference into hops: ListModels
  (ingress + gateway, both ingresses), CountTokens (plus a preprocess call), and
  `prepare` on the preprocess deployment from this process.
- `redis_round_trips_per_request`: commands that clients sent to Redis during the
  measured Chat requests (both ingresses), per request. Redis's `INFO commandstats` counts every
  command, also those a Lua script runs inside the server, so the slowlog (threshold 0 for
  the run) tells the two apart, and tells a rate-limit admission (the script's force flag
  0) from an output-token settlement (force 1).
- `mirror_primary_p99_ratio`: p99 of requests to `bench-mirrored` (mirrored at fraction
  1.0 to `bench-slow`: the small model, one running request at a time) over p99 of
  `bench-plain` (same model and seed, no mirror), alternating one to each.
- `redis_decision_p99_ms` and `redis_cluster_decision_p99_ms`: one rate-limit decision
  (the admission's script, user and tenant limits) from `RedisRateLimiter`, 16 at a time, on
  one redis-server and on a Redis Cluster of three masters, both on loopback
  (`tests/bench/redis_decisions.py`, runnable alone).

    python -m tests.bench.bench_gateway --out .bench/gateway.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

from museserve.client import ChatClient, build_request
from museserve.config import MuseServeConfig, parse_config
from museserve.domain import ChatRequest, Identity, Message, Role, SamplingParams, TextPart
from museserve.gateway.identity import key_digest
from museserve.messages import PreparedRequest
from museserve.preprocess.preprocessor import Preprocessor
from museserve.v1 import chat_pb2 as pb
from tests.bench.machine import machine
from tests.bench.redis_decisions import bench_decisions
from tests.redis_server import RedisServer
from tests.support import free_port, start_local_app

API_KEY, TENANT, USER, TIER = "sk-bench", "bench", "bench-user", "bench"
PLAIN, MIRRORED, SLOW = "bench-plain", "bench-mirrored", "bench-slow"
PROMPT = "Say one word."
MIRROR_OUTPUT_TOKENS = 8
MIRROR_MAX_IN_FLIGHT = 4
WARMUP = 10
NEVER_REFUSES = {"requests_per_minute": 1e9, "request_burst": 1e9, "tokens_per_minute": 1e12, "token_burst": 1e12}
TIMEOUT_S = 60


def bench_config(redis_url: str) -> MuseServeConfig:
    engine = {
        "context_length": 2048,
        "max_output_tokens": 256,
        "default_max_output_tokens": 16,
        "stream_interval_ms": 0,
        "kv_cache_bytes": 16 << 20,
    }
    tiny = {"size": "tiny", "load_format": "dummy", "seed": 0}
    mirror = {
        "candidate": SLOW,
        "fraction": 1.0,
        "max_in_flight": MIRROR_MAX_IN_FLIGHT,
        "timeout_s": 30,
        "content": "digest",
    }
    return parse_config(
        {
            "server": {
                "grpc_port": free_port(),
                "http_port": free_port(),
                "direct_grpc_port": free_port(),
                "request_timeout_s": TIMEOUT_S,
            },
            "gateway": {
                "auth": "api_key",
                "api_keys": [{"sha256": key_digest(API_KEY), "tenant": TENANT, "tier": TIER}],
                "tiers": {"default": {}, TIER: {"user": NEVER_REFUSES, "tenant": NEVER_REFUSES}},
                "redis": {"url": redis_url, "timeout_ms": 200, "on_unavailable": "fail_open"},
                "default_model": PLAIN,
                "routes": {"instant": PLAIN},
            },
            "pools": [
                {"name": PLAIN, "model": tiny, "engine": engine},
                {"name": MIRRORED, "model": tiny, "engine": engine, "mirror": mirror},
                {
                    "name": SLOW,
                    "model": {"size": "small", "load_format": "dummy", "seed": 1},
                    "engine": {**engine, "max_running_requests": 1, "kv_cache_bytes": 64 << 20},
                },
            ],
        },
        source="bench config",
    )


def p50_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def p99_ms(seconds: list[float]) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    return statistics.quantiles(seconds, n=100, method="inclusive")[98] * 1000


def timed(call, *args) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


# -- Redis accounting ---------------------------------------------------------------------


def command_calls(server: RedisServer) -> Counter:
    """Calls per command name since the server started, from INFO commandstats, leaving
    out INFO itself (these snapshots; the gateway sends none)."""
    text = server.command("INFO", "commandstats").decode()
    calls = Counter()
    for line in text.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line.removeprefix("cmdstat_").partition(":")
            calls[name] = int(stats.split(",")[0].removeprefix("calls="))
    calls.pop("info", None)
    return calls


def settled_calls(server: RedisServer, settle_s: float = 3.0) -> Counter:
    """Commandstats once the last requests' settlements (background tasks) have landed:
    two snapshots a moment apart agree."""
    previous = command_calls(server)
    deadline = time.monotonic() + settle_s
    while True:
        time.sleep(0.3)
        current = command_calls(server)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


def start_command_log(r: redis.Redis) -> None:
    """Every command goes to the slowlog from now on, with its args and its client."""
    r.config_set("slowlog-max-len", 1_000_000)
    r.config_set("slowlog-log-slower-than", 0)
    r.slowlog_reset()


def logged_commands(r: redis.Redis) -> list[tuple[str, list[str], bool]]:
    """(command, args, sent by a client) oldest first; False: run by a Lua script."""
    entries = r.slowlog_get(1_000_000)
    r.config_set("slowlog-log-slower-than", 10_000)
    out = []
    for entry in reversed(entries):
        words = entry["command"].decode(errors="replace").split(" ")
        out.append((words[0].lower(), words[1:], entry["client_address"] != b"?:0"))
    return out


def redis_accounting(calls: Counter, log: list[tuple[str, list[str], bool]], requests: int) -> dict:
    """`calls`: commandstats over the measured requests; `log`: the slowlog of the same
    window (a little wider: our own config and INFO calls, which are left out)."""
    inside = Counter(name for name, _, by_client in log if not by_client)
    sent = calls - inside
    kinds = Counter()
    for name, args, by_client in log:
        if by_client and name == "evalsha":  # sha, numkeys, keys..., force flag, ...
            kinds["admission" if args[2 + int(args[1])] == "0" else "settlement"] += 1
    return {
        "redis_round_trips_per_request": sum(sent.values()) / requests,
        "redis_admission_decisions_per_request": kinds["admission"] / requests,
        "redis_settlements_per_request": kinds["settlement"] / requests,
        "redis_commands_by_name": dict(sorted(calls.items())),
        "redis_commands_sent_by_clients": dict(sorted(sent.items())),
        "redis_commands_inside_scripts": dict(sorted(inside.items())),
    }


# -- the gateway's overhead ---------------------------------------------------------------


def chat_request(model: str = "", max_output_tokens: int = 1) -> pb.ChatRequest:
    request = build_request(PROMPT, model=model, temperature=0.0, max_output_tokens=max_output_tokens)
    request.request_id = uuid.uuid4().hex
    return request


def domain_request() -> ChatRequest:
    """`chat_request()` as the gateway hands it to preprocess for the bench's caller."""
    return ChatRequest(
        request_id=uuid.uuid4().hex,
        messages=(Message(Role.USER, (TextPart(PROMPT),)),),
        sampling=SamplingParams(temperature=0.0, max_output_tokens=1),
        identity=Identity(tenant=TENANT, user=USER, tier=TIER),
    )


def prepared_once(config: MuseServeConfig) -> PreparedRequest:
    return Preprocessor.for_pools(config)[PLAIN].prepare(domain_request(), config.pool(PLAIN))


def bench_overhead(
    config: MuseServeConfig, client: ChatClient, ingress: ChatClient, server: RedisServer, requests: int
) -> dict:
    """`client` goes through Ray Serve's gRPC proxy, `ingress` to the gateway's own server."""
    from ray import serve

    pool = serve.get_deployment_handle(f"pool-{PLAIN}", app_name=config.app_name).options(stream=True)
    preprocess = serve.get_deployment_handle("preprocess", app_name=config.app_name)
    prepared = prepared_once(config)
    served = preprocess.prepare.remote(domain_request(), PLAIN).result()
    same = ("prompt_token_ids", "tenant", "priority", "sampling", "mode")
    assert all(getattr(served, f) == getattr(prepared, f) for f in same), "direct and served requests differ"

    def full() -> None:
        reply = client.chat(chat_request(), timeout=TIMEOUT_S)
        assert reply.usage.output_tokens == 1 and reply.model == PLAIN, reply

    def via_ingress() -> None:
        reply = ingress.chat(chat_request(), timeout=TIMEOUT_S)
        assert reply.usage.output_tokens == 1 and reply.model == PLAIN, reply

    def direct() -> None:
        call = dataclasses.replace(prepared, request_id=uuid.uuid4().hex, deadline_unix_s=time.time() + TIMEOUT_S)
        chunks = list(pool.generate.remote(call))
        assert chunks[-1].finish is not None and chunks[-1].usage.output_tokens == 1, chunks[-1]

    # Cheap calls that stop at each hop: their p50s split the full path's extra time.
    probes = {
        "list_models (proxy + gateway)": lambda: client.list_models(timeout=TIMEOUT_S),
        "list_models (direct ingress + gateway)": lambda: ingress.list_models(timeout=TIMEOUT_S),
        "count_tokens (proxy + gateway + preprocess)": lambda: client.count_tokens(chat_request(), timeout=TIMEOUT_S),
        "preprocess.prepare (handle from this process)": lambda: preprocess.prepare.remote(
            domain_request(), PLAIN
        ).result(),
    }
    _, call = client.stub.Chat.with_call(chat_request(), metadata=client.metadata, timeout=TIMEOUT_S)
    trailing = dict(call.trailing_metadata())
    assert trailing.get("x-served-by") == PLAIN and "x-ratelimit-remaining-tokens" in trailing, trailing
    for _ in range(WARMUP):
        for warm in (full, via_ingress, direct, *probes.values()):
            warm()
    time.sleep(0.5)  # the last settlements land before the count starts

    r = redis.Redis.from_url(server.url)
    start_command_log(r)
    before = command_calls(server)
    times: dict[str, list[float]] = {"full": [], "ingress": [], "direct": [], **{name: [] for name in probes}}
    turns = [("full", full), ("ingress", via_ingress), ("direct", direct)]
    for i in range(requests):
        for name, call in turns[i % 3 :] + turns[: i % 3]:
            times[name].append(timed(call))
        for name, probe in probes.items():
            times[name].append(timed(probe))
    calls = settled_calls(server) - before
    log = logged_commands(r)
    r.close()
    full_p50, ingress_p50, direct_p50 = p50_ms(times["full"]), p50_ms(times["ingress"]), p50_ms(times["direct"])
    return {
        "gateway_overhead_ratio": ingress_p50 / direct_p50,
        "gateway_p50_ms": ingress_p50,
        "gateway_p99_ms": p99_ms(times["ingress"]),
        "gateway_overhead_ratio_via_ray_proxy": full_p50 / direct_p50,
        "gateway_via_ray_proxy_p50_ms": full_p50,
        "gateway_via_ray_proxy_p99_ms": p99_ms(times["full"]),
        "direct_pool_p50_ms": direct_p50,
        "direct_pool_p99_ms": p99_ms(times["direct"]),
        "hops_p50_ms": {name: p50_ms(times[name]) for name in probes},
        **redis_accounting(calls, log, len(times["full"]) + len(times["ingress"])),
        "direct_ingress_requests": len(times["ingress"]),
        "ray_proxy_requests": len(times["full"]),
        "direct_requests": len(times["direct"]),
    }


# -- mirroring ----------------------------------------------------------------------------


def bench_mirror(config: MuseServeConfig, client: ChatClient, server: RedisServer, requests: int) -> dict:
    from ray import serve

    slow = serve.get_deployment_handle(f"pool-{SLOW}", app_name=config.app_name)

    def call(model: str, sent: list[str] | None = None) -> None:
        request = chat_request(model, MIRROR_OUTPUT_TOKENS)
        reply = client.chat(request, timeout=TIMEOUT_S)
        assert reply.model == model and reply.usage.output_tokens > 0, reply
        if sent is not None:
            sent.append(request.request_id)

    for _ in range(WARMUP):
        call(PLAIN)
        call(MIRRORED)
    times: dict[str, list[float]] = {PLAIN: [], MIRRORED: []}
    mirrored_ids: list[str] = []
    for i in range(requests):
        for model in (PLAIN, MIRRORED) if i % 2 == 0 else (MIRRORED, PLAIN):
            times[model].append(timed(call, model, mirrored_ids if model == MIRRORED else None))

    deadline = time.monotonic() + 15  # copies still queued on the candidate may yet record
    while time.monotonic() < deadline:
        stats = slow.stats.remote().result()
        if stats["num_running"] + stats["num_waiting"] == 0:
            break
        time.sleep(0.2)
    time.sleep(0.3)
    r = redis.Redis.from_url(server.url)
    records = [json.loads(fields[b"record"]) for _, fields in r.xrange(f"{config.gateway.redis.key_prefix}:mirror")]
    r.close()
    measured = set(mirrored_ids)
    candidate = [rec["candidate"] for rec in records if rec["request_id"] in measured]
    plain_p99, mirrored_p99 = p99_ms(times[PLAIN]), p99_ms(times[MIRRORED])
    return {
        "mirror_primary_p99_ratio": mirrored_p99 / plain_p99,
        "plain_p50_ms": p50_ms(times[PLAIN]),
        "plain_p99_ms": plain_p99,
        "mirrored_p50_ms": p50_ms(times[MIRRORED]),
        "mirrored_p99_ms": mirrored_p99,
        "requests_per_side": requests,
        "copies_recorded": len(candidate),
        "copies_skipped_at_cap_or_lost": requests - len(candidate),
        "candidate_statuses": dict(Counter(c["status"] for c in candidate)),
        "candidate_latency_p50_ms": p50_ms([c["latency_s"] for c in candidate]) if candidate else None,
        "candidate_engine": {k: v for k, v in stats.items() if k != "recent"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/gateway.json"))
    parser.add_argument("--requests", type=int, default=200, help="Measured requests per side of each comparison.")
    args = parser.parse_args()

    import ray

    started = time.perf_counter()
    with RedisServer() as server:
        config = bench_config(server.url)
        try:
            start_local_app(config)
            metadata = [("authorization", f"Bearer {API_KEY}"), ("x-user-id", USER)]
            client = ChatClient(f"127.0.0.1:{config.server.grpc_port}", metadata=metadata)
            ingress = ChatClient(f"127.0.0.1:{config.server.direct_grpc_port}", metadata=metadata)
            overhead = bench_overhead(config, client, ingress, server, args.requests)
            mirror = bench_mirror(config, client, server, args.requests)
            client.close()
            ingress.close()
        finally:
            ray.shutdown()
    decisions = bench_decisions()
    report = {
        "benchmark": "gateway",
        "machine": machine(),
        "workload": {
            "prompt": PROMPT,
            "overhead": "unary Chat, greedy, 1 output token, mode-routed to a tiny pool, through the gateway's "
            "direct gRPC ingress and through Ray Serve's gRPC proxy; direct: handle.generate",
            "mirror": f"unary Chat, greedy, {MIRROR_OUTPUT_TOKENS} output tokens, tiny pools; candidate: small "
            f"model, max_running_requests 1; mirror fraction 1.0, max_in_flight {MIRROR_MAX_IN_FLIGHT}",
            "requests_per_side": args.requests,
            "warmup_per_side": WARMUP,
            "rate_limits": "user and tenant: requests and tokens, never refusing (Redis)",
            "throughput_optimized": config.server.throughput_optimized,
            "redis_round_trips_per_request": "commands sent by clients (not those run inside the Lua script) "
            "over the measured Chat requests of both ingresses, per request",
        },
        **overhead,
        "mirror": mirror,
        "mirror_primary_p99_ratio": mirror["mirror_primary_p99_ratio"],
        **decisions,
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
