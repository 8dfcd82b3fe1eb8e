"""The open-loop run: send each request at its scheduled time, bounded in every direction.

Invariants:
- A request is dispatched at its scheduled offset whatever happened to earlier ones; with
  a concurrency cap it then waits in the client, and that wait is part of its latency.
- The run ends by itself: no request is dispatched after `duration_s`, and at
  `duration_s + drain_timeout_s` whatever is still waiting or in flight is cancelled and
  counted as cancelled (status CLIENT_CANCELLED), never dropped.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from .plan import RequestSpec
from .progress import Progress
from .records import CANCELLED, Sample, Transport


@dataclass(frozen=True)
class RunConfig:
    rate: float
    duration_s: float
    arrival: str = "poisson"
    gamma_shape: float = 1.0
    max_requests: int | None = None
    concurrency: int | None = None  # None: no cap
    warmup_s: float = 0.0  # requests scheduled before this are sent but not measured
    drain_timeout_s: float = 30.0
    request_timeout_s: float | None = 60.0  # per-request deadline, from its send
    seed: int = 0


@dataclass
class RunResult:
    config: RunConfig
    samples: list[Sample]
    wall_s: float  # from the start to the last completion (or the hard stop)


async def send_one(
    spec: RequestSpec, sample: Sample, transport: Transport, clock: Callable[[], float],
    cap: asyncio.Semaphore | None, timeout_s: float | None,
) -> None:  # fmt: skip
    """Sends `spec` and fills in `sample`, end and status always set; raises only CancelledError."""
    try:
        if cap is not None:
            await cap.acquire()
        try:
            sample.sent = clock()
            await transport.send(spec, sample, clock, timeout_s)
        finally:
            if cap is not None:
                cap.release()
        if sample.status is None:
            sample.status = "NO_STATUS"
    except asyncio.CancelledError:
        sample.status = CANCELLED
        raise
    except Exception as e:  # a transport bug must not end the run; it is an error like any other
        sample.status, sample.error = "CLIENT_ERROR", f"{type(e).__name__}: {e}"
    finally:
        sample.end = clock()


async def run_open_loop(
    offsets: Sequence[float], specs: Sequence[RequestSpec], transport: Transport, config: RunConfig,
    progress: Progress | None = None, observe: Callable[[list[Sample]], None] | None = None,
) -> RunResult:  # fmt: skip
    """`offsets[i]` is when `specs[i]` is due, in seconds from the start. `observe` is given
    the run's samples as the run starts, for a caller that watches them fill in."""
    if len(specs) < len(offsets):
        raise ValueError("one request spec is needed per scheduled arrival")
    loop = asyncio.get_running_loop()
    start = loop.time()

    def clock() -> float:
        return loop.time() - start

    cap = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    samples = [Sample(i, float(t), warmup=t < config.warmup_s) for i, t in enumerate(offsets)]
    if observe is not None:
        observe(samples)
    jobs = (
        (sample.scheduled, partial(send_one, spec, sample, transport, clock, cap, config.request_timeout_s))
        for sample, spec in zip(samples, specs, strict=False)
    )
    return await run_jobs(jobs, samples, clock, config, progress)


async def run_jobs(
    jobs: Iterable[tuple[float, Callable[[], Awaitable[None]]]], samples: list[Sample], clock: Callable[[], float],
    config: RunConfig, progress: Progress | None,
) -> RunResult:  # fmt: skip
    """Starts each job at its time, in order (none at or after `duration_s`); at `duration_s +
    drain_timeout_s` cancels those still running. `samples`: what the jobs fill in."""
    tasks: list[asyncio.Task] = []
    ticker = asyncio.create_task(progress.tick_every_second(samples, clock)) if progress else None
    hard_stop = config.duration_s + config.drain_timeout_s
    try:
        for start_s, job in jobs:
            if start_s >= config.duration_s:
                break
            if (delay := start_s - clock()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(job()))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(hard_stop - clock(), 0.0))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        for task in tasks:  # only if the run itself was cancelled (Ctrl-C)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            progress.finish(samples, clock)
    ends = [s.end for s in samples if s.end is not None]
    return RunResult(config, samples, max(ends, default=clock()))


def run_blocking(
    offsets: Sequence[float], specs: Sequence[RequestSpec], transport_factory: Callable[[], Transport],
    config: RunConfig, quiet: bool = False, observe: Callable[[list[Sample]], None] | None = None,
) -> RunResult:  # fmt: skip
    """Runs in a fresh event loop; the transport is made inside it (gRPC aio channels bind to a loop)."""

    async def main() -> RunResult:
        transport = transport_factory()
        try:
            progress = None if quiet else Progress(sys.stderr)
            return await run_open_loop(offsets, specs, transport, config, progress, observe)
        finally:
            await transport.close()

    return asyncio.run(main())
