"""The open-loop runner with a fake transport: latency from the scheduled time, the cap,
warm-up, and the hard stop."""

from __future__ import annotations

import asyncio

from museserve_loadtest.plan import RequestSpec
from museserve_loadtest.records import CANCELLED, Clock, Sample
from museserve_loadtest.runner import RunConfig, run_open_loop


class SlowTransport:
    """Answers after `service_s`: first token at half of it, `tokens` events evenly."""

    def __init__(self, service_s: float, tokens: int = 4, status: str = "OK"):
        self.service_s, self.tokens, self.status = service_s, tokens, status
        self.in_flight = self.most_in_flight = 0

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.service_s / 2)
            for _ in range(self.tokens):
                sample.token_times.append(clock())
                await asyncio.sleep(self.service_s / 2 / self.tokens)
            sample.input_tokens, sample.output_tokens, sample.status = 10, self.tokens, self.status
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass


def _specs(n: int) -> list[RequestSpec]:
    return [RequestSpec(index=i, prompt="hi", max_output_tokens=4) for i in range(n)]


async def test_latency_counts_the_wait_behind_the_concurrency_cap():
    # 5 requests due at once, one at a time, 0.1 s each: the k-th waits k * 0.1 s in the
    # client, and its end-to-end latency from the scheduled time must show that.
    transport = SlowTransport(0.1)
    config = RunConfig(rate=1, duration_s=1, concurrency=1, drain_timeout_s=5)
    result = await run_open_loop([0.0] * 5, _specs(5), transport, config)
    assert transport.most_in_flight == 1
    e2e = sorted(s.e2e for s in result.samples)
    for k, latency in enumerate(e2e):
        assert latency >= 0.1 * (k + 1) - 0.01  # never less than the queueing it suffered
    # With timestamps from the send instead, each would look like ~0.1 s: coordinated omission.
    assert e2e[-1] - e2e[0] >= 0.39
    last = max(result.samples, key=lambda s: s.e2e)
    assert last.sent - last.scheduled >= 0.39  # sent late, yet measured from its schedule
    assert last.ttft >= 0.4


async def test_without_a_cap_requests_overlap():
    transport = SlowTransport(0.2)
    result = await run_open_loop([0.0, 0.01, 0.02], _specs(3), transport, RunConfig(rate=1, duration_s=1))
    assert transport.most_in_flight == 3 and all(s.ok for s in result.samples)


async def test_hard_stop_cancels_what_is_left_and_counts_it():
    transport = SlowTransport(10.0)
    config = RunConfig(rate=1, duration_s=0.2, drain_timeout_s=0.2, concurrency=1)
    result = await run_open_loop([0.0, 0.05], _specs(2), transport, config)
    assert [s.status for s in result.samples] == [CANCELLED, CANCELLED]
    assert result.samples[0].sent is not None and result.samples[1].sent is None  # one never left the client
    assert 0.39 <= result.wall_s < 1.5  # the hard stop at duration + drain, not the 10 s answer


async def test_nothing_is_dispatched_after_the_duration_and_warmup_is_marked():
    result = await run_open_loop(
        [0.0, 0.05, 0.3], _specs(3), SlowTransport(0.01), RunConfig(rate=1, duration_s=0.2, warmup_s=0.02)
    )
    assert [s.warmup for s in result.samples] == [True, False, False]
    assert result.samples[2].status is None and result.samples[2].sent is None


async def test_a_transport_that_raises_is_an_error_not_a_crash():
    class Broken(SlowTransport):
        async def send(self, spec, sample, clock, timeout_s):
            raise RuntimeError("boom")

    result = await run_open_loop([0.0], _specs(1), Broken(0), RunConfig(rate=1, duration_s=1))
    assert result.samples[0].status == "CLIENT_ERROR" and "boom" in result.samples[0].error
