"""The gateway's overload path on synthetic pool reports: refusal before any work (no quota
charged, the pool never called) with a retry delay from the estimate, the first-token deadline
an admitted request carries, a client deadline that tightens the budget, and degradation that
every response reports. Pools are scripted; the preprocess tier is the real in-process one."""

from __future__ import annotations

import time
from typing import Any

import pytest

from museserve.config import MuseServeConfig, parse_config
from museserve.domain import ChatRequest, Identity, Message, Mode, ModeParams, Role, TextPart
from museserve.errors import ResourceExhausted
from museserve.gateway.gateway import Gateway
from museserve.gateway.live_admission import LiveAdmission
from museserve.gateway.observer import CountingObserver
from museserve.gateway.pool_loads import PoolLoads
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.messages import PriorityLoad, ReplicaLoad
from tests.support import text_preprocess
from tests.unit.test_gateway_tier import ScriptedPool


def make_config(**tier: Any) -> MuseServeConfig:
    return parse_config({
        "pools": [{"name": "main", "admission": {"ttft_objective_s": 2.0, "admit_within": 1.0}, "modes": ["instant", "thinking"]}],
        "gateway": {"tiers": {"default": {"priority": 1, **tier}}},
    })  # fmt: skip


def loaded(waiting: int, finishes_per_s: float = 2.0) -> ReplicaLoad:
    """A full batch of 8 with `waiting` queued: a new request waits (waiting + 1) / finishes_per_s."""
    return ReplicaLoad(
        running=8, waiting=waiting, max_running=8, by_priority=(PriorityLoad(1, 8, waiting, 10 * waiting),),
        prefill_tokens_per_s=1e6, finishes_per_s=finishes_per_s, taken_at=time.time(),
    )  # fmt: skip


def build(config: MuseServeConfig, load: ReplicaLoad) -> tuple[Gateway, ScriptedPool, CountingObserver]:
    loads = PoolLoads()
    loads.publish("main", {"replica-1": load})
    pool, observer = ScriptedPool(tokens=2), CountingObserver()
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    live = LiveAdmission(config.pools, config.gateway, loads)
    return (
        Gateway(config, text_preprocess(config), {"main": pool}, quota=quota, observer=observer, live=live),
        pool,
        observer,
    )


def chat(mode: Mode = Mode.INSTANT, deadline_unix_s: float | None = None) -> ChatRequest:
    return ChatRequest(
        "r1", (Message(Role.USER, (TextPart("hello there"),)),), mode=ModeParams(mode),
        identity=Identity(tenant="acme", user="bob"), deadline_unix_s=deadline_unix_s,
    )  # fmt: skip


async def test_an_overloaded_pool_refuses_at_once_with_a_retry_delay_and_charges_nothing() -> None:
    gateway, pool, observer = build(make_config(), loaded(waiting=6))  # 3.5 s to a first token
    with pytest.raises(ResourceExhausted, match="model main is overloaded") as refused:
        await gateway.chat(chat())
    assert refused.value.retry_after_s == pytest.approx(1.5, abs=0.01)
    assert pool.calls == [] and observer.decisions["overloaded", "default"] == 1
    assert not any(kind == "prompt" for _, kind in observer.token_counts)


async def test_an_admitted_request_carries_its_first_token_deadline_where_its_tier_drops_late_ones() -> None:
    gateway, pool, observer = build(make_config(drop_late=True), loaded(waiting=2))  # 1.5 s: fits 2 s
    before = time.time()
    await gateway.chat(chat())
    (sent,) = pool.calls
    own_prefill_s = sent.num_prompt_tokens / 1e6  # at the reported prefill rate
    assert before + 2.0 + own_prefill_s <= sent.first_token_by_unix_s <= time.time() + 2.0 + own_prefill_s
    assert observer.queue_estimates == [("main", pytest.approx(1.5))]
    gateway, pool, _ = build(make_config(), loaded(waiting=2))  # drop_late is off by default
    await gateway.chat(chat())
    assert pool.calls[0].first_token_by_unix_s == 0.0


async def test_a_client_deadline_closer_than_the_objective_tightens_the_budget() -> None:
    gateway, pool, _ = build(make_config(), loaded(waiting=2))  # 1.5 s
    with pytest.raises(ResourceExhausted, match="over the 1.0 s admission allows"):
        await gateway.chat(chat(deadline_unix_s=time.time() + 1.0))
    await gateway.chat(chat(deadline_unix_s=time.time() + 30.0))
    assert pool.calls[0].deadline_unix_s <= time.time() + 30.0  # the client's, not the server's 600 s


async def test_a_degrading_tier_serves_a_cheaper_request_and_says_so() -> None:
    config = make_config(degrade={"at": 0.5, "thinking_budget": 16})
    gateway, pool, observer = build(config, loaded(waiting=1))  # 1 s: half the objective
    metadata: list[tuple[str, str]] = []
    result = await gateway.chat(chat(Mode.THINKING), metadata.extend)
    assert pool.calls[0].thinking_budget == 16 and result.degraded == "thinking_budget=16"
    assert ("x-museserve-degraded", "thinking_budget=16") in metadata
    assert observer.degradations["main", "default", "thinking_budget"] == 1
    calm, pool, _ = build(config, loaded(waiting=0))  # 0.5 s: below where degradation starts
    assert (await calm.chat(chat(Mode.THINKING))).degraded == ""
    assert pool.calls[0].thinking_budget == config.pools[0].engine.default_thinking_budget
