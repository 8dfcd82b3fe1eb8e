"""Open-loop load from the load-test tool, run in a thread while a scenario injects faults.

The run's clock starts when the thread starts it; `BackgroundLoad.now()` reads the same
clock from the test's thread, so a fault's time and the samples' times compare directly.
"""

from __future__ import annotations

import threading
import time

from museserve_loadtest.arrivals import schedule
from museserve_loadtest.grpc_transport import GrpcTransport
from museserve_loadtest.media import MediaCache
from museserve_loadtest.plan import plan_requests
from museserve_loadtest.records import Sample
from museserve_loadtest.runner import RunConfig, RunResult, run_blocking
from museserve_loadtest.workload import ModalityMix, Tenant, Uniform, Workload

KEY_ENV = "MUSESERVE_CHAOS_KEY"


def chaos_workload(image_fraction: float = 0.0, long_answers: bool = False) -> Workload:
    """Short greedy chat turns; `image_fraction` of them carry a small PNG (the preprocess
    tier). `long_answers`: 100-250 tokens, so that several streams are mid-answer at any time."""
    modalities = [ModalityMix(kind="text", weight=1.0 - image_fraction)] if image_fraction < 1 else []
    if image_fraction > 0:
        modalities.append(ModalityMix(kind="image", weight=image_fraction, width=64, height=64))
    return Workload(
        name="chaos",
        temperature=0.0,
        modalities=modalities,
        prompt_words=Uniform(dist="uniform", min=8, max=48),
        output_tokens=Uniform(dist="uniform", min=100, max=300)
        if long_answers
        else Uniform(dist="uniform", min=8, max=40),
        tenants=[Tenant(name="chaos", key_env=KEY_ENV, user="chaos")],
    )


class BackgroundLoad:
    """`with BackgroundLoad(...) as load:` sends `rate` requests/s (Poisson) for `duration_s`;
    leaving the block waits for every request to end (or the drain timeout)."""

    def __init__(
        self, address: str, key: str, rate: float, duration_s: float, *, workload: Workload | None = None,
        concurrency: int | None = None, request_timeout_s: float = 60.0, drain_timeout_s: float = 60.0, seed: int = 0,
        channels: int = 4,
    ):  # fmt: skip
        self.config = RunConfig(
            rate=rate, duration_s=duration_s, concurrency=concurrency, request_timeout_s=request_timeout_s,
            drain_timeout_s=drain_timeout_s, seed=seed,
        )  # fmt: skip
        workload = workload or chaos_workload()
        offsets = schedule(rate, duration_s, seed=seed)
        self._specs = plan_requests(workload, len(offsets), workload.keys({KEY_ENV: key}), seed=seed + 1,
                                    media=MediaCache())  # fmt: skip
        self._offsets = offsets
        self._address = address
        self._channels = channels
        self._started = 0.0
        self._result: RunResult | None = None
        self._live: list[Sample] = []  # the run's samples, filled in as requests end
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)

    def _run(self) -> None:
        try:
            self._started = time.monotonic()
            self._result = run_blocking(self._offsets, self._specs, lambda: GrpcTransport(self._address, channels=self._channels), self.config,
                                        quiet=True, observe=self._live.extend)  # fmt: skip
        except BaseException as e:  # re-raised in the test's thread
            self._error = e

    def now(self) -> float:
        """Seconds on the run's clock."""
        return time.monotonic() - self._started

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.now()))

    def in_flight(self) -> int:
        """Requests sent and not yet ended, now (read from the run's thread, unlocked: a
        sample's fields are set one at a time, each read is whole)."""
        return sum(1 for s in list(self._live) if s.sent is not None and s.end is None)

    def wait_in_flight(self, at_least: int, not_before_s: float, timeout_s: float = 20.0) -> None:
        """Sleeps until `not_before_s` on the run's clock, then until `at_least` requests are in flight."""
        self.sleep_until(not_before_s)
        deadline = time.monotonic() + timeout_s
        while self.in_flight() < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {at_least} requests in flight after {timeout_s:g} s")
            time.sleep(0.01)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        while not self._started:
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> list[Sample]:
        self._thread.join(timeout=self.config.duration_s + self.config.drain_timeout_s + 60)
        if self._error is not None:
            raise self._error
        assert self._result is not None, "the load thread did not finish"
        return self._result.samples

    @property
    def samples(self) -> list[Sample]:
        assert self._result is not None, "the run has not ended"
        return self._result.samples
