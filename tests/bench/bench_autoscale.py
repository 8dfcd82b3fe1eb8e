"""Autoscaling on a step of load: one small pool (tests/autoscale_step.py) scaled by its own
policy, against the same step on a fixed replica.

Writes `.bench/autoscale.json`: `scale_up_s` (step start to the second replica serving),
`scale_down_s` (step end to one replica again), `requests_lost`, and `ttft_p90_during_step_s`
for the autoscaled pool and for the fixed one, plus the machine's ISA flags. Each replica runs
its model on one core, so on a 2-core machine the second replica has a core of its own; two
replicas of every core each would contend for both (measured: TTFT p90 10x worse). The step
lasts 30 s: a new replica takes about 9 s to start, so a shorter step ends before it helps.

    .venv/bin/python -m tests.bench.bench_autoscale [--rate 8] [--step-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

from tests.autoscale_step import FAST_SCALING, decision_lines, deploy, open_loop, p90, running_replicas, step_config

APP = "autoscale-bench"


class ReplicaWatch:
    """Polls the pool's running replicas on a thread: (seconds since start, count) on change."""

    def __init__(self, app: str, period_s: float = 0.25):
        self.app, self.period_s = app, period_s
        self.started = time.monotonic()
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            count = running_replicas(self.app)
            if not self.timeline or self.timeline[-1][1] != count:
                self.timeline.append((time.monotonic() - self.started, count))
            self._stop.wait(self.period_s)

    def first(self, when: float, predicate) -> float | None:
        """Seconds from `when` (on this watch's clock) to the first count satisfying `predicate`."""
        for at, count in self.timeline:
            if at >= when and predicate(count):
                return at - when
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_step(base, autoscaling: dict | None, rate: float, step_s: float, tokens: int, settle_s: float) -> dict:
    from ray import serve

    config = step_config(base, APP, autoscaling)
    deploy(config)
    try:
        watch = ReplicaWatch(APP)
        step_start = time.monotonic() - watch.started
        outcomes = asyncio.run(open_loop(APP, rate, stop=lambda elapsed: elapsed > step_s, tokens=tokens))
        step_end = time.monotonic() - watch.started
        deadline = time.monotonic() + settle_s
        while autoscaling is not None and time.monotonic() < deadline and running_replicas(APP) > 1:
            time.sleep(0.25)
        time.sleep(0.5)
        watch.stop()
        ttfts = [o.ttft_s for o in outcomes if o.ttft_s is not None]
        return {
            "requests": len(outcomes),
            "requests_lost": sum(not o.ok for o in outcomes),
            "ttft_p90_during_step_s": p90(ttfts),
            "scale_up_s": watch.first(step_start, lambda n: n >= 2),
            "scale_down_s": watch.first(step_end, lambda n: n <= 1) if autoscaling is not None else None,
            "replica_timeline": [(round(at - step_start, 2), n) for at, n in watch.timeline],
            "errors": sorted({o.error for o in outcomes if not o.ok})[:5],
        }
    finally:
        serve.delete(APP, _blocking=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/autoscale.json"))
    parser.add_argument("--rate", type=float, default=6.0, help="Requests per second during the step.")
    parser.add_argument("--step-s", type=float, default=30.0, help="Seconds of load (a new replica takes ~9 s).")
    parser.add_argument("--tokens", type=int, default=64, help="Answer tokens per request.")
    parser.add_argument("--settle-s", type=float, default=40.0, help="Bound on the wait for the scale-down.")
    args = parser.parse_args()

    import ray
    from ray import serve

    from museserve.config import load_config
    from museserve.serve.app import init_local_ray, start_serve
    from tests.bench.machine import machine
    from tests.bench.report import write_report
    from tests.support import free_port

    base = load_config()
    base = base.model_copy(
        update={"server": base.server.model_copy(update={"grpc_port": free_port(), "http_port": free_port()})}
    )
    init_local_ray(base)
    start_serve(base)
    try:
        # The first replica of a cluster pays one-off costs (imports, first kernels): not either run's.
        print("warm-up ...", file=sys.stderr, flush=True)
        run_step(base, None, args.rate, 2.0, args.tokens, 0.0)
        print("fixed step ...", file=sys.stderr, flush=True)
        fixed = run_step(base, None, args.rate, args.step_s, args.tokens, 0.0)
        print("autoscaled step ...", file=sys.stderr, flush=True)
        scaled = run_step(base, FAST_SCALING, args.rate, args.step_s, args.tokens, args.settle_s)
        serve.shutdown()  # the controller's log is complete once it has stopped
        scaled["decisions"] = [line.strip() for line in decision_lines()]
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {
        "benchmark": "autoscale",
        "machine": machine(),
        "workload": {
            "pool": "tiny dummy-weights model, 1 request running per replica, the rest waiting",
            "step": f"open loop, {args.rate:g} requests/s for {args.step_s:g} s, {args.tokens} tokens each",
            "policy": FAST_SCALING,
        },
        "scale_up_s": scaled["scale_up_s"],
        "scale_down_s": scaled["scale_down_s"],
        "requests_lost": scaled["requests_lost"],  # the fixed run's: runs.fixed_1_replica
        "ttft_p90_during_step_s": {
            "autoscaled": scaled["ttft_p90_during_step_s"],
            "fixed_1_replica": fixed["ttft_p90_during_step_s"],
        },  # fmt: skip
        "runs": {"autoscaled": scaled, "fixed_1_replica": fixed},
    }
    write_report(args.out, report)


if __name__ == "__main__":
    main()
