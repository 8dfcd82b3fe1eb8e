"""Unary Chat latency per path, the paths of a mode taking turns."""

from __future__ import annotations

import statistics
import time

from tests.bench.bench_gateway import p50_ms, p99_ms
from tests.bench.ingress.modes import TIMEOUT_S, TINY, chat_request

WARMUP = 10


def bench_latency(clients: dict, requests: int) -> dict:
    """p50/p99/mean ms of `requests` greedy 1-token Chat calls per path, in a rotating order."""

    def call(client) -> float:
        start = time.perf_counter()
        reply = client.chat(chat_request(temperature=0.0), timeout=TIMEOUT_S)
        elapsed = time.perf_counter() - start
        assert reply.usage.output_tokens == 1 and reply.model == TINY, reply
        return elapsed

    names = list(clients)
    for _ in range(WARMUP):
        for name in names:
            call(clients[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(requests):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(call(clients[name]))
    return {
        name: {"p50_ms": p50_ms(t), "p99_ms": p99_ms(t), "mean_ms": statistics.fmean(t) * 1000, "requests": len(t)}
        for name, t in times.items()
    }
