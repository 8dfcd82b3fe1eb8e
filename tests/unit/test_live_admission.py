"""Admission from the pools' live state, on synthetic replica reports: the wait estimate, the
boundary around the objective, tiers and priorities, deadlines, the retry delay, what this
gateway sent since a report, stale reports, and degradation. No Ray, no engine."""

from __future__ import annotations

import math

import pytest

from museserve.config import DegradeConfig, parse_config
from museserve.domain import ChatRequest, Identity, Message, Mode, ModeParams, Role, TextPart
from museserve.gateway.degrade import degrade
from museserve.gateway.live_admission import MAX_RETRY_S, MIN_RETRY_S, UNKNOWN_RETRY_S, LiveAdmission
from museserve.gateway.pool_loads import PoolLoads
from museserve.gateway.queue_estimate import Ahead, Preemption, first_token_estimate, wait_s
from museserve.messages import PriorityLoad, ReplicaLoad

NOW = 1_000_000.0
NO_PREEMPTION = Preemption()


def report(
    *,
    running: int = 0,
    waiting: tuple[tuple[int, int, int, int], ...] = (),  # (priority, running, waiting, waiting_tokens)
    max_running: int = 8,
    backlog: int = 0,
    prefill_rate: float = 1000.0,
    finishes: float = 2.0,
    step_s: float = 0.05,
    kv_usage: float = 0.1,
    taken_at: float = NOW,
) -> ReplicaLoad:
    classes = tuple(PriorityLoad(p, r, w, t) for p, r, w, t in waiting)
    return ReplicaLoad(
        running=running or sum(c.running for c in classes),
        waiting=sum(c.waiting for c in classes),
        kv_usage=kv_usage,
        max_running=max_running,
        prefill_backlog_tokens=backlog,
        by_priority=classes,
        prefill_tokens_per_s=prefill_rate,
        finishes_per_s=finishes,
        step_s=step_s,
        taken_at=taken_at,
    )


def test_an_idle_replica_waits_one_step_and_its_own_prefill_is_apart() -> None:
    estimate = first_token_estimate(report(), 500, 1, NO_PREEMPTION)
    assert (estimate.wait_s, estimate.prefill_s) == (pytest.approx(0.05), pytest.approx(0.5))
    assert estimate.first_token_s == pytest.approx(0.55)
    unmeasured = first_token_estimate(report(prefill_rate=0.0, finishes=0.0, step_s=0.0), 500, 1, NO_PREEMPTION)
    assert unmeasured.first_token_s == 0.0  # nothing measured, nothing waits


def test_prefill_ahead_counts_the_backlog_and_waiting_tokens_of_its_priority_or_better() -> None:
    load = report(backlog=1000, waiting=((0, 1, 1, 2000), (1, 1, 1, 3000), (2, 1, 1, 9000)))
    assert wait_s(load, 1, NO_PREEMPTION) == pytest.approx((1000 + 2000 + 3000) / 1000 + 0.05)
    assert wait_s(load, 0, NO_PREEMPTION) == pytest.approx((1000 + 2000) / 1000 + 0.05)


def test_a_full_batch_waits_for_finishes() -> None:
    full = report(waiting=((1, 8, 3, 30),), max_running=8, finishes=2.0)
    assert wait_s(full, 1, NO_PREEMPTION) == pytest.approx(4 / 2.0 + 0.05)  # three ahead and itself, at 2/s
    assert math.isinf(wait_s(report(waiting=((1, 8, 3, 30),), finishes=0.0), 1, NO_PREEMPTION))


def test_a_full_kv_cache_with_requests_waiting_is_a_full_batch() -> None:
    kv_full = report(waiting=((1, 2, 1, 10),), max_running=8, kv_usage=0.99, finishes=1.0)
    assert wait_s(kv_full, 1, NO_PREEMPTION, kv_full=0.95) == pytest.approx(2 / 1.0 + 0.05)


def test_a_higher_priority_preempts_all_but_the_protected_share() -> None:
    low_full = report(waiting=((2, 8, 4, 40),), max_running=8, finishes=1.0)
    assert wait_s(low_full, 1, Preemption(True, 0.25)) == pytest.approx(0.05)  # slots to take
    assert wait_s(low_full, 1, NO_PREEMPTION) == pytest.approx(1 / 1.0 + 0.05)  # waits for a finish
    taken = report(waiting=((1, 6, 0, 0), (2, 2, 4, 40)), max_running=8, finishes=1.0)
    assert wait_s(taken, 1, Preemption(True, 0.25)) == pytest.approx(1.0 + 0.05)  # 2 protected


def test_the_wait_is_never_below_what_its_priority_or_better_met_lately() -> None:
    load = ReplicaLoad(
        running=2, max_running=8, step_s=0.05, prefill_tokens_per_s=1000.0, finishes_per_s=1.0,
        by_priority=(PriorityLoad(0, 1, 0, 0, queue_p90_s=0.2), PriorityLoad(1, 1, 0, 0, queue_p90_s=3.0)),
    )  # fmt: skip
    assert wait_s(load, 1, NO_PREEMPTION) == pytest.approx(3.0)  # the model says 0.05 s; they waited 3
    assert wait_s(load, 0, NO_PREEMPTION) == pytest.approx(0.2)  # a better priority is not held by worse


def test_requests_sent_since_the_report_count_as_ahead() -> None:
    load = report(waiting=((1, 8, 0, 0),), max_running=8, finishes=4.0)
    assert wait_s(load, 1, NO_PREEMPTION, Ahead(requests=3, tokens=0)) == pytest.approx(4 / 4.0 + 0.05)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def admission(tiers: dict | None = None, **pool_admission: object) -> tuple[LiveAdmission, PoolLoads, Clock]:
    """With `admit_within` 1.0 unless given: the whole objective, so the arithmetic shows."""
    pool_admission = {"admit_within": 1.0, **pool_admission}
    config = parse_config({
        "pools": [{"name": "main", "admission": pool_admission}],
        "gateway": {"tiers": tiers or {"default": {"priority": 1}}},
    })  # fmt: skip
    loads, clock = PoolLoads(), Clock()
    return LiveAdmission(config.pools, config.gateway, loads, clock), loads, clock


def test_admits_up_to_the_objective_and_refuses_past_it_with_a_retry_from_the_estimate() -> None:
    live, loads, _ = admission(ttft_objective_s=2.0)
    loads.publish("main", {"a": report(waiting=((1, 8, 2, 20),), finishes=2.0, step_s=0.0)})  # 1.5 s with its own
    fits = live.check("main", "default", 1, 0, NOW + 600)
    assert fits.admit and fits.estimate.wait_s == pytest.approx(1.5) and fits.budget_s == 2.0
    loads.publish("main", {"a": report(waiting=((1, 8, 4, 40),), finishes=2.0, step_s=0.0)})  # 2.5 s
    refused = live.check("main", "default", 1, 0, NOW + 600)
    assert not refused.admit and refused.retry_after_s == pytest.approx(0.5)
    loads.publish("main", {"a": report(waiting=((1, 8, 3, 30),), finishes=2.0, step_s=0.0)})  # 2.0 s: on the line
    assert live.check("main", "default", 1, 0, NOW + 600).admit


def test_admission_keeps_a_margin_below_the_objective() -> None:
    live, loads, _ = admission(ttft_objective_s=2.0, admit_within=0.5)
    loads.publish("main", {"a": report(waiting=((1, 8, 1, 10),), finishes=2.0, step_s=0.0)})  # 1.0 s
    assert live.check("main", "default", 1, 0, NOW + 600).admit
    loads.publish("main", {"a": report(waiting=((1, 8, 2, 20),), finishes=2.0, step_s=0.0)})  # 1.5 s
    refused = live.check("main", "default", 1, 0, NOW + 600)
    assert not refused.admit and refused.budget_s == 1.0 and refused.retry_after_s == pytest.approx(0.5)


def test_the_retry_delay_is_bounded_and_unknown_waits_get_a_fixed_one() -> None:
    live, loads, _ = admission()
    loads.publish("main", {"a": report(waiting=((1, 8, 200, 2000),), finishes=2.0)})
    assert live.check("main", "default", 1, 0, NOW + 600).retry_after_s == MAX_RETRY_S
    loads.publish("main", {"a": report(waiting=((1, 8, 4, 40),), finishes=2.0, step_s=0.0)})
    assert live.check("main", "default", 1, 0, NOW + 600).retry_after_s == pytest.approx(0.5)
    loads.publish("main", {"a": report(waiting=((1, 8, 3, 30),), finishes=1.99, step_s=0.0)})  # just over
    assert live.check("main", "default", 1, 0, NOW + 600).retry_after_s == MIN_RETRY_S
    loads.publish("main", {"a": report(waiting=((1, 8, 1, 10),), finishes=0.0)})
    assert live.check("main", "default", 1, 0, NOW + 600).retry_after_s == UNKNOWN_RETRY_S


def test_a_near_deadline_tightens_the_budget() -> None:
    live, loads, _ = admission(ttft_objective_s=2.0)
    loads.publish("main", {"a": report(waiting=((1, 8, 2, 20),), finishes=2.0, step_s=0.0)})  # 1.5 s
    assert not live.check("main", "default", 1, 0, NOW + 1.0).admit
    assert live.check("main", "default", 1, 0, NOW + 1.6).admit


def test_tiers_have_their_own_objective_and_priority() -> None:
    tiers = {"default": {"priority": 1}, "gold": {"priority": 0, "ttft_objective_s": 5.0}}
    live, loads, _ = admission(tiers, ttft_objective_s=1.0)
    loads.publish("main", {"a": report(waiting=((0, 4, 1, 10), (1, 4, 6, 60)), finishes=2.0, step_s=0.0)})
    assert not live.check("main", "default", 1, 0, NOW + 600).admit  # 7 ahead of it at 2/s
    gold = live.check("main", "gold", 0, 0, NOW + 600)
    # Only the one gold request is ahead, and both start at once in slots taken from the
    # default tier (which keeps its protected quarter): the waiting gold prefill is all it waits for.
    assert gold.admit and gold.estimate.wait_s == pytest.approx(10 / 1000)
    assert live.objective_s("main", "gold") == 5.0 and live.objective_s("main", "unknown-tier") == 1.0


def test_the_best_replica_decides_and_sent_requests_count_until_a_report_shows_them() -> None:
    live, loads, clock = admission(ttft_objective_s=2.0)
    busy = report(waiting=((1, 8, 10, 100),), finishes=2.0, step_s=0.0)
    calm = report(waiting=((1, 8, 0, 0),), finishes=2.0, step_s=0.0)
    loads.publish("main", {"a": busy, "b": calm})
    assert live.estimate("main", 1, 0).wait_s == pytest.approx(0.5)
    for _ in range(6):
        live.sent("main", 1, 10)  # 3 per replica, ahead of the next one
    assert live.estimate("main", 1, 0).wait_s == pytest.approx(2.0)
    assert live.estimate("main", 0, 0).wait_s == 0.0  # a better priority preempts them
    clock.now += 1.0
    loads.publish(
        "main", {"a": busy, "b": report(waiting=((1, 8, 0, 0),), finishes=2.0, step_s=0.0, taken_at=clock.now)}
    )
    assert live.estimate("main", 1, 0).wait_s == pytest.approx(2.0)  # "a"'s report is older than the sends
    loads.publish("main", {"b": report(waiting=((1, 8, 0, 0),), finishes=2.0, step_s=0.0, taken_at=clock.now)})
    assert live.estimate("main", 1, 0).wait_s == pytest.approx(0.5)  # the one replica left has shown them


def test_without_a_fresh_report_or_with_the_static_policy_there_is_no_estimate() -> None:
    live, loads, clock = admission(stale_after_s=5.0)
    assert live.check("main", "default", 1, 0, NOW + 600).estimate is None
    loads.publish("main", {"a": report(waiting=((1, 8, 100, 100),), finishes=1.0)})
    clock.now += 5.1
    verdict = live.check("main", "default", 1, 0, NOW + 600)
    assert verdict.admit and verdict.estimate is None
    static, loads, _ = admission(policy="static")
    loads.publish("main", {"a": report(waiting=((1, 8, 100, 100),), finishes=1.0)})
    assert static.check("main", "default", 1, 0, NOW + 600).admit


def chat(mode: Mode, budget: int | None = None, agents: int | None = None) -> ChatRequest:
    return ChatRequest(
        "r",
        (Message(Role.USER, (TextPart("hi"),)),),
        mode=ModeParams(mode, thinking_budget=budget, num_agents=agents),
        identity=Identity(),
    )


def test_degradation_cuts_reasoning_costs_and_says_how() -> None:
    pool = parse_config({"pools": [{"name": "main", "modes": ["instant", "thinking", "contemplating"]}]}).pools[0]
    policy = DegradeConfig(thinking_budget=64, contemplating_agents=2)
    assert degrade(chat(Mode.INSTANT), pool, policy) is None
    thinking = degrade(chat(Mode.THINKING), pool, policy)  # the pool's default budget is larger
    assert thinking is not None and thinking.request.mode.thinking_budget == 64
    assert thinking.describe() == "thinking_budget=64" and thinking.kind == "thinking_budget"
    assert degrade(chat(Mode.THINKING, budget=32), pool, policy) is None  # already cheaper
    contemplating = degrade(chat(Mode.CONTEMPLATING, agents=4), pool, policy)
    assert contemplating is not None and contemplating.describe() == "thinking_budget=64,agents=2"
    instant = degrade(chat(Mode.CONTEMPLATING, agents=4), pool, DegradeConfig(to_instant=True))
    assert instant is not None and instant.request.mode == ModeParams(Mode.INSTANT) and instant.kind == "mode"


def test_sent_requests_are_totalled_per_priority_until_a_report_shows_them() -> None:
    from museserve.gateway.live_admission import SentSinceReport

    sent = SentSinceReport()
    for at, priority, tokens in ((1.0, 1, 10), (2.0, 0, 20), (3.0, 1, 30), (4.0, 2, 40)):
        sent.add(at, priority, tokens)
    assert sent.ahead_of(1) == (3, 60) and sent.ahead_of(0) == (1, 20) and sent.ahead_of(2) == (4, 100)
    sent.shown(2.0)  # a report taken after the first two
    assert sent.ahead_of(1) == (1, 30) and sent.ahead_of(0) == (0, 0) and sent.ahead_of(2) == (2, 70)
