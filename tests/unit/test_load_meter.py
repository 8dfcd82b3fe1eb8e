"""The replica's load meter on an injected clock: rates over its window, a young replica's
shorter span, zeros before anything was measured, and the first-token percentile."""

from __future__ import annotations

import pytest

from museserve.engine.load_meter import QUEUE_WINDOW_S, RECENT_STEPS, LoadMeter, prefill_tokens
from museserve.engine.plan import ScheduledSequence, SchedulerPlan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_measured_reads_zero() -> None:
    meter = LoadMeter(clock=Clock())
    assert meter.prefill_tokens_per_s == 0.0
    assert meter.finishes_per_s == 0.0
    assert meter.step_s == 0.0
    assert meter.ttft_p90_s == 0.0


def test_prefill_rate_counts_only_steps_that_prefilled() -> None:
    meter = LoadMeter(clock=Clock())
    meter.step(0.5, 1000)
    meter.step(0.1, 0)  # decodes only: in step_s, not in the prefill rate
    meter.step(1.0, 1000)
    meter.step(0.45, 900, 1000)  # beside 100 decodes: mostly a prefill, 2000 prompt tokens/s
    meter.step(0.5, 8, 40)  # a few prompt tokens beside many decodes: not a prefill measure
    assert meter.prefill_tokens_per_s == pytest.approx(2000.0)  # the median of 2000, 1000, 2000
    assert meter.step_s == pytest.approx(2.55 / 5)


def test_one_slow_step_does_not_move_the_prefill_rate() -> None:
    meter = LoadMeter(clock=Clock())
    meter.step(20.0, 500)  # the first step: kernels warming up
    for _ in range(4):
        meter.step(0.25, 500)
    assert meter.prefill_tokens_per_s == pytest.approx(2000.0)


def test_step_measures_keep_the_recent_steps_only() -> None:
    meter = LoadMeter(clock=Clock())
    for _ in range(RECENT_STEPS):
        meter.step(1.0, 10)  # 10 tokens/s
    for _ in range(RECENT_STEPS):
        meter.step(0.1, 100)  # 1000 tokens/s: the older steps fall out
    assert meter.prefill_tokens_per_s == pytest.approx(1000.0)
    assert meter.step_s == pytest.approx(0.1)


def test_a_rate_stays_known_while_the_replica_idles() -> None:
    clock = Clock()
    meter = LoadMeter(clock=clock)
    meter.step(0.5, 500)
    clock.now += 3600
    assert meter.prefill_tokens_per_s == pytest.approx(1000.0)


def test_finishes_per_s_over_the_window() -> None:
    clock = Clock()
    meter = LoadMeter(window_s=10.0, clock=clock)
    meter.step(0.1, 0)  # observed from here
    clock.now += 30
    for _ in range(20):  # 20 finishes over the last 10 s
        clock.now += 0.5
        meter.finished()
    assert meter.finishes_per_s == pytest.approx(20 / 10)
    clock.now += 5.25  # the first half left the window
    assert meter.finishes_per_s == pytest.approx(10 / 10)
    clock.now += 10
    assert meter.finishes_per_s == 0.0


def test_a_young_replica_divides_by_the_time_it_has_observed() -> None:
    clock = Clock()
    meter = LoadMeter(window_s=15.0, clock=clock)
    meter.step(0.1, 0)
    for _ in range(6):
        clock.now += 0.5
        meter.finished()
    assert meter.finishes_per_s == pytest.approx(6 / 3.0)  # 3 s observed, not the 15 s window


def test_a_very_young_replica_counts_at_least_a_second() -> None:
    clock = Clock()
    meter = LoadMeter(clock=clock)
    meter.finished()
    clock.now += 0.01
    assert meter.finishes_per_s == pytest.approx(1.0)


def test_ttft_p90_over_the_window() -> None:
    clock = Clock()
    meter = LoadMeter(window_s=10.0, clock=clock)
    for value in range(100, 0, -1):  # 1..100 s, out of order
        meter.first_token(float(value))
    assert meter.ttft_p90_s == 90.0  # nearest rank
    clock.now += 5
    for _ in range(10):
        meter.first_token(0.2)
    clock.now += 6  # the first hundred left the window
    assert meter.ttft_p90_s == pytest.approx(0.2)
    clock.now += 10
    assert meter.ttft_p90_s == 0.0


def item(rid: str, num_new: int, samples: bool) -> ScheduledSequence:
    return ScheduledSequence(rid, 0, tuple(range(num_new)), (0,), samples=samples)


def test_a_steps_prefill_tokens_exclude_its_decodes() -> None:
    plan = SchedulerPlan(
        (item("decode-a", 1, True), item("decode-b", 1, True), item("chunk", 16, False), item("last", 5, True)),
        (),
    )
    assert prefill_tokens(plan) == 21


def test_queue_waits_are_kept_per_priority_over_a_short_window() -> None:
    clock = Clock()
    meter = LoadMeter(clock=clock)
    for wait in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 3.0):
        meter.started(1, wait)
    meter.started(0, 0.05)
    assert meter.queue_p90_s(1) == pytest.approx(0.9) and meter.queue_p90_s(0) == pytest.approx(0.05)
    assert meter.queue_p90_s(2) == 0.0
    clock.now += QUEUE_WINDOW_S + 0.1
    assert meter.queue_p90_s(1) == 0.0  # a queue that drained reads so soon
