"""Client cancels per path: does the request stop in the model replica, and how fast."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections import Counter

from tests.bench.ingress.modes import LONG_OUTPUT, SMALL, TIMEOUT_S, TINY, chat_request, client_for, in_replica

STREAMS = 20
# Rounds of STREAMS streams per pool: as many streams per path as the earlier runs sent (two
# passes of one small round and three tiny ones). A lost cancel on the tiny model ends at the
# model's natural end (77 tokens), on the small one it runs to LONG_OUTPUT.
CANCEL_ROUNDS = {SMALL: 2, TINY: 6}
DELTAS_BEFORE_CANCEL = 3
CANCEL_WAIT_S = 15.0
IDLE_WAIT_S = 90.0
GATEWAY = "gateway"


def kv_blocks_held(pool_deployment: str) -> int | None:
    """Blocks the pool replica's engine holds now; None if its internals cannot be read."""

    def held(actor) -> int:
        engine = actor._replica_impl._user_callable_wrapper._callable.engine
        return engine.blocks.num_blocks - engine.blocks.num_free_blocks

    try:
        return in_replica(pool_deployment, held)
    except Exception:
        return None


def gateway_ended() -> dict[str, int] | None:
    """Final statuses of the gRPC Chat/ChatStream calls the gateway replica has ended so
    far, by code: its `observer.request("grpc", code)` calls, counted from the first call of
    this function on (it wraps the replica's observer). None if it cannot be read."""

    def count(actor) -> dict[str, int]:
        observer = actor._replica_impl._user_callable_wrapper._callable._gateway.observer
        if "bench_codes" not in vars(observer):
            codes: dict[str, int] = {}
            original = observer.request

            def request(api: str, code: str) -> None:
                if api == "grpc":
                    codes[code] = codes.get(code, 0) + 1
                original(api, code)

            observer.request = request
            observer.bench_codes = codes
        return dict(observer.bench_codes)

    try:
        return in_replica(GATEWAY, count)
    except Exception:
        return None


def replica_museserve_path(pool_deployment: str) -> str:
    """Where the pool replica imported museserve from (the run records which source it measured)."""

    def where(actor) -> str:
        import museserve

        return museserve.__file__

    try:
        return in_replica(pool_deployment, where)
    except Exception as e:
        return f"unknown: {e!r}"


def wait_pool_idle(pool, timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        stats = pool.stats.remote().result(timeout_s=10)
        if stats["num_running"] + stats["num_waiting"] == 0:
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def cancel_streams(address: str, pool_name: str, ids: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """One ChatStream per id, all at once, each cancelled by the client after
    `DELTAS_BEFORE_CANCEL` text deltas; returns when each was cancelled, and what the client saw."""
    import grpc

    cancelled_at: dict[str, float] = {}
    client_outcome: dict[str, str] = {}
    start = threading.Barrier(len(ids))
    client = client_for(address)

    def one(request_id: str) -> None:
        request = chat_request(pool_name, LONG_OUTPUT, temperature=1.0, seed=1)
        request.request_id = request_id
        start.wait()
        call = client.stream(request, timeout=TIMEOUT_S)
        deltas = 0
        try:
            for event in call:
                kind = event.WhichOneof("event")
                deltas += kind == "text_delta"
                if kind == "finish":
                    client_outcome[request_id] = "finished_before_cancel"
                    return
                if deltas >= DELTAS_BEFORE_CANCEL:
                    break
        except grpc.RpcError as e:
            client_outcome[request_id] = f"error before cancel: {e.code().name} {e.details()}"
            return
        call.cancel()
        cancelled_at[request_id] = time.monotonic()
        try:
            next(call)
            client_outcome[request_id] = "no CANCELLED after cancel"
        except grpc.RpcError as e:
            client_outcome[request_id] = e.code().name
        except StopIteration:
            client_outcome[request_id] = "stream ended after cancel"

    threads = [threading.Thread(target=one, args=(rid,), daemon=True) for rid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S + 10)
    client.close()
    return cancelled_at, client_outcome


def bench_cancel(address: str, pool_name: str, app_name: str, label: str) -> dict:
    """One round: `STREAMS` streams to `pool_name`, then what the replica and the gateway saw."""
    from ray import serve

    pool = serve.get_deployment_handle(f"pool-{pool_name}", app_name=app_name)
    ids = [f"{label}-{i}-{uuid.uuid4().hex[:8]}" for i in range(STREAMS)]
    gateway_before = gateway_ended()
    cancelled_at, client_outcome = cancel_streams(address, pool_name, ids)

    ended_at: dict[str, float] = {}
    records: dict[str, dict] = {}
    window_end = (max(cancelled_at.values()) if cancelled_at else time.monotonic()) + CANCEL_WAIT_S
    while time.monotonic() < window_end and len(ended_at) < len(cancelled_at):
        recent = pool.stats.remote().result(timeout_s=10)["recent"]
        now = time.monotonic()
        for rid in cancelled_at:
            record = recent.get(rid)
            if record is not None:
                records[rid] = record
                if rid not in ended_at and record["phase"] not in ("running", "waiting"):
                    ended_at[rid] = now
        time.sleep(0.05)
    recent = pool.stats.remote().result(timeout_s=10)["recent"]
    records.update({rid: recent[rid] for rid in cancelled_at if rid in recent})
    kv_held = kv_blocks_held(f"pool-{pool_name}")
    idle_after = wait_pool_idle(pool, IDLE_WAIT_S)
    kv_held_idle = kv_blocks_held(f"pool-{pool_name}")
    final = pool.stats.remote().result(timeout_s=10)["recent"]
    time.sleep(0.5)  # the last chunks reach the gateway: a stream that ran on has ended there too
    gateway_after = gateway_ended()

    cancelled = [rid for rid in cancelled_at if records.get(rid, {}).get("phase") == "cancelled"]
    delays = sorted((ended_at[rid] - cancelled_at[rid]) * 1000 for rid in cancelled if rid in ended_at)
    ran_on = [rid for rid in cancelled_at if rid not in cancelled]
    phases = Counter(records.get(rid, {}).get("phase", "not seen by the replica") for rid in cancelled_at)
    gateway = None
    if gateway_before is not None and gateway_after is not None:
        gateway = {code: n - gateway_before.get(code, 0) for code, n in gateway_after.items()}
        gateway = {code: n for code, n in sorted(gateway.items()) if n}
    return {
        "streams": STREAMS,
        "cancelled_by_client": len(cancelled_at),
        "client_outcomes": dict(Counter(client_outcome.values())),
        "cancelled_in_replica": len(cancelled),
        "not_cancelled": len(ran_on),
        "gateway_ended": gateway,
        "phases_at_window_end": dict(phases),
        "stop_after_cancel_ms": {
            "p50": statistics.median(delays) if delays else None,
            "max": delays[-1] if delays else None,
        },
        "tokens_generated_by_cancelled": {
            "min": min((records[rid]["generated_tokens"] for rid in cancelled), default=None),
            "max": max((records[rid]["generated_tokens"] for rid in cancelled), default=None),
        },
        "tokens_generated_by_not_cancelled_at_end": sorted(
            final.get(rid, {}).get("generated_tokens", -1) for rid in ran_on
        ),
        "phases_of_not_cancelled_at_end": sorted(final.get(rid, {}).get("phase", "?") for rid in ran_on),
        "kv_blocks_held_at_window_end": kv_held,
        "pool_idle_after_s": idle_after,
        "kv_blocks_held_when_idle": kv_held_idle,
    }


def bench_cancels(address: str, app_name: str, path: str) -> dict:
    """`CANCEL_ROUNDS` rounds per pool through `address`, with totals per pool."""
    cells: dict[str, dict] = {}
    for pool_name, rounds in CANCEL_ROUNDS.items():
        outcomes = [bench_cancel(address, pool_name, app_name, f"{path}-{pool_name}-{i}") for i in range(rounds)]
        cells[pool_name] = {
            "rounds": rounds,
            "streams": sum(o["streams"] for o in outcomes),
            "cancelled_in_replica": sum(o["cancelled_in_replica"] for o in outcomes),
            "not_cancelled": sum(o["not_cancelled"] for o in outcomes),
            "cancelled_in_gateway": sum((o["gateway_ended"] or {}).get("CANCELLED", 0) for o in outcomes),
            "per_round": outcomes,
        }
    return cells
