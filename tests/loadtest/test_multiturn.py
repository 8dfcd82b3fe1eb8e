"""Multi-turn runs with a fake transport (turn timing, answers fed back, failures, the hard
stop), the per-turn statistics and cached-token share on hand-made samples, and the
programmatic API and report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from museserve_loadtest.conversation_loop import run_conversation_loop
from museserve_loadtest.conversation_stats import cached_token_share, per_turn, summarize_conversations
from museserve_loadtest.conversations import plan_conversations
from museserve_loadtest.harness import Target
from museserve_loadtest.multiturn import (
    build_conversation_report,
    format_conversation_summary,
    run_conversations,
    run_conversations_blocking,
)
from museserve_loadtest.plan import RequestSpec
from museserve_loadtest.records import CANCELLED, Clock, Sample, Transport
from museserve_loadtest.runner import RunConfig
from museserve_loadtest.workload import Workload, parse_workload

WORKLOAD = {
    "name": "conv",
    "temperature": 0,
    "output_tokens": {"dist": "fixed", "value": 4},
    "tenants": [{"name": "a", "key_env": "ONE_KEY"}, {"name": "b", "key_env": "ONE_KEY"}],
    "conversation": {
        "turns": {"dist": "uniform", "min": 2, "max": 3},
        "system_prompt_words": {"dist": "fixed", "value": 30},
        "user_words": {"dist": "fixed", "value": 5},
        "think_time_s": {"min": 0.02, "max": 0.02},
    },
}


def _workload() -> Workload:
    return parse_workload(WORKLOAD)


class EchoTransport:
    """Answers after `service_s` with text naming the request; counts every prompt word as a
    token and every word before the last message as cached. `fail` = (conversation, turn)s
    answered UNAVAILABLE, keyed by the nonce at the head of the user turn."""

    def __init__(self, service_s: float = 0.01, fail: frozenset[tuple[int, int]] = frozenset()):
        self.service_s, self.fail = service_s, fail
        self.received: list[tuple[float, RequestSpec]] = []

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None:
        self.received.append((clock(), spec))
        await asyncio.sleep(self.service_s)
        words = [len(m.text.split()) for m in spec.messages]
        _, c, _, t = spec.messages[-1].text.split()[:4]
        if (int(c), int(t.rstrip(":"))) in self.fail:
            sample.status = "UNAVAILABLE"
            return
        for part in (f"reply {spec.index}", " done"):
            sample.token_times.append(clock())
            if sample.answer_parts is not None:
                sample.answer_parts.append(part)
        sample.input_tokens, sample.cached_tokens, sample.output_tokens = sum(words), sum(words[:-1]), 2
        sample.status = "OK"

    async def close(self) -> None:
        pass


def _plans(n: int = 3, gap: float = 0.05):
    return plan_conversations(_workload(), [gap * i for i in range(n)], {"a": "k"}, seed=5)


async def test_each_turn_carries_the_answers_received_and_waits_for_them():
    plans = _plans()
    transport = EchoTransport()
    result = await run_conversation_loop(plans, transport, RunConfig(rate=1, duration_s=1, drain_timeout_s=5))
    samples = result.samples
    assert len(samples) == sum(p.turns for p in plans) and all(s.ok for s in samples)
    assert [s.index for s in samples] == list(range(len(samples)))
    sent = {s.index: spec for _, spec in transport.received for s in samples if s.index == spec.index}
    for plan in plans:
        turns = sorted((s for s in samples if s.conversation == plan.conversation), key=lambda s: s.turn)
        assert [s.turn for s in turns] == list(range(plan.turns)) and turns[0].scheduled == plan.start_s
        for before, after in zip(turns, turns[1:], strict=False):
            # Due when the answer is in, plus the think time; and it carries that answer.
            assert after.scheduled == pytest.approx(before.end + plan.think_times_s[before.turn])
            assert after.sent >= after.scheduled - 1e-3
            history = sent[after.index].messages
            assert history[-2].role == "assistant" and history[-2].text == before.answer == f"reply {before.index} done"
            assert history[:-2] == sent[before.index].messages
        assert sent[turns[0].index].messages[0].text == plan.system_prompt


async def test_a_failed_turn_ends_its_conversation():
    plans = _plans(2)
    transport = EchoTransport(fail=frozenset({(0, 0)}))
    result = await run_conversation_loop(plans, transport, RunConfig(rate=1, duration_s=1, drain_timeout_s=5))
    first = [s for s in result.samples if s.conversation == 0]
    assert [(s.turn, s.status) for s in first] == [(0, "UNAVAILABLE")]
    assert all(s.ok for s in result.samples if s.conversation == 1)


async def test_the_hard_stop_cancels_turns_in_flight_and_sends_no_more():
    plans = _plans(2)
    config = RunConfig(rate=1, duration_s=0.06, drain_timeout_s=0.1)
    result = await run_conversation_loop(plans, EchoTransport(service_s=10), config)
    assert [(s.conversation, s.turn, s.status) for s in result.samples] == [(0, 0, CANCELLED), (1, 0, CANCELLED)]
    assert result.wall_s < 1.0


async def test_no_conversation_starts_after_the_duration_and_warmup_covers_whole_conversations():
    plans = _plans(3, gap=0.1)  # starts at 0, 0.1, 0.2
    config = RunConfig(rate=1, duration_s=0.15, warmup_s=0.05, drain_timeout_s=5)
    result = await run_conversation_loop(plans, EchoTransport(), config)
    assert {s.conversation for s in result.samples} == {0, 1}
    assert all(s.warmup == (s.conversation == 0) for s in result.samples)


def _turn(conversation: int, turn: int, ttft: float, prompt: int, cached: int, status: str = "OK", warmup=False):
    start = 10.0 * conversation + turn
    times = [start + ttft] if status == "OK" else []
    return Sample(0, start, warmup=warmup, sent=start, token_times=times, end=start + ttft + 0.5, status=status,
                  input_tokens=prompt, cached_tokens=cached, conversation=conversation, turn=turn)  # fmt: skip


def _hand_made() -> list[Sample]:
    return [
        _turn(0, 0, 0.2, 100, 0),
        _turn(0, 1, 0.1, 150, 100),
        _turn(0, 2, 0.1, 200, 150),
        _turn(1, 0, 0.4, 100, 50),
        _turn(1, 1, 0.3, 160, 96),
        _turn(2, 0, 9.0, 100, 0, status="UNAVAILABLE"),
        _turn(3, 0, 0.6, 100, 0),
        _turn(3, 1, 0.2, 1000, 1000, status=CANCELLED),
        _turn(9, 0, 5.0, 999, 0, warmup=True),
    ]


def test_the_cached_share_is_summed_tokens_not_a_mean_of_ratios():
    samples = _hand_made()
    ok = [s for s in samples if s.ok and not s.warmup]
    assert cached_token_share(ok) == pytest.approx((100 + 150 + 50 + 96) / (100 + 150 + 200 + 100 + 160 + 100))
    assert cached_token_share([]) is None


def test_per_turn_ttft_and_cached_share():
    turns = per_turn(_hand_made())
    assert sorted(turns) == [0, 1, 2]
    zero, one, two = turns[0], turns[1], turns[2]
    assert (zero["requests"], zero["ok"]) == (4, 3)  # one failed; the warm-up conversation is left out
    assert zero["ttft_p50_s"] == pytest.approx(0.4) and zero["ttft_p90_s"] == pytest.approx(0.56)
    assert zero["cached_token_share"] == pytest.approx(50 / 300)
    assert (one["requests"], one["ok"]) == (3, 2)  # one cancelled
    assert one["ttft_p50_s"] == pytest.approx(0.2) and one["cached_token_share"] == pytest.approx(196 / 310)
    assert two["cached_token_share"] == pytest.approx(0.75) and two["input_tokens_mean"] == 200


def test_the_flat_summary():
    summary = summarize_conversations(_hand_made(), warmup_s=0.0)
    assert summary["conversations"] == 4 and summary["requests"] == 8 and summary["ok"] == 6
    assert summary["errors"] == 1 and summary["errors_by_code"] == {"UNAVAILABLE": 1} and summary["cancelled"] == 1
    ttfts = [0.2, 0.1, 0.1, 0.4, 0.3, 0.6]
    assert summary["ttft_p50_s"] == pytest.approx(0.25) and summary["ttft_p90_s"] == pytest.approx(0.5)
    assert summary["ttft_p50_s"] == pytest.approx(sorted(ttfts)[2] / 2 + sorted(ttfts)[3] / 2)
    last_end = 31.0 + 0.2 + 0.5  # conversation 3's cancelled turn ends last
    assert summary["throughput_rps"] == pytest.approx(7 / last_end) and summary["ok_rps"] == pytest.approx(6 / last_end)
    assert summary["cached_token_share"] == pytest.approx(396 / 810) and set(summary["per_turn"]) == {0, 1, 2}


@dataclass(frozen=True)
class FakeTarget(Target):
    """A Target whose transport is an EchoTransport, one per run."""

    def transport_factory(self) -> Transport:
        return EchoTransport()


async def test_run_conversations_twice_in_one_process():
    workload = _workload()
    first = await run_conversations(FakeTarget(), workload, rate=20, duration_s=0.3, seed=2, keys="sk-one")
    second = await run_conversations(FakeTarget(), workload, rate=20, duration_s=0.3, seed=2, keys="sk-one")
    # The same seed gives the same conversations; the order turns were sent in may differ.
    assert first and sorted((s.conversation, s.turn) for s in first) == sorted((s.conversation, s.turn) for s in second)
    summary = summarize_conversations(first)
    assert summary["ok"] == summary["requests"] == len(first) and summary["errors"] == 0
    assert summary["per_turn"][1]["cached_token_share"] > summary["per_turn"][0]["cached_token_share"]
    with pytest.raises(ValueError, match="no conversation section"):
        await run_conversations(FakeTarget(), parse_workload({"name": "single"}), rate=1, duration_s=0.1)


def test_run_conversations_blocking_and_the_report(monkeypatch):
    monkeypatch.setenv("ONE_KEY", "sk-env")
    samples = run_conversations_blocking(FakeTarget(), _workload(), 20, 0.2, seed=1, max_conversations=2)
    assert {s.conversation for s in samples} == {0, 1}

    config = RunConfig(rate=5, duration_s=0.4, drain_timeout_s=5)
    plans = _plans(3, gap=0.1)
    result = asyncio.run(run_conversation_loop(plans, EchoTransport(), config))
    report = build_conversation_report(result, plans, Target(), _workload(), {"ttft": 1.0})
    c = report["conversations"]
    assert report["config"]["rate_unit"] == "conversations per second" and c["started"] == 3
    assert c["started_per_s"] == pytest.approx(3 / 0.4) and report["requests"]["ok"] == len(result.samples)
    assert set(c["per_turn"]) >= {"0", "1"} and c["cached_token_share"] > 0
    assert c["requests_per_s"] == pytest.approx(report["throughput"]["requests_per_s"])
    assert "ttft p50 by turn (0-based)  0:" in format_conversation_summary(report)
