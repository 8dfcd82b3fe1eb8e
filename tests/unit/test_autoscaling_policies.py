"""The autoscaling policies on synthetic metric histories: one tick per second, each tick's
signals as the controller would hand them over (no Ray)."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import pytest

from museserve.messages import ReplicaLoad
from museserve.serve.autoscaling_decision import Pressure, ScaleRules, ScaleState, decide
from museserve.serve.autoscaling_policies import TierPolicy, gateway_signals, pool_signals, preprocess_signals
from museserve.serve.autoscaling_stats import CPU, IN_FLIGHT, KV_USAGE, TTFT_P90_S, WAITING, CpuMeter, pool_stats

RULES = dict(min_replicas=1, max_replicas=4, upscale_delay_s=3.0, downscale_delay_s=10.0, cooldown_s=5.0,
             downscale_below=0.5)  # fmt: skip
POOL_TARGETS = {"kv_usage_target": 0.8, "waiting_per_replica": 4.0, "ttft_objective_s": 2.0}


class Controller:
    """Serve's side of the loop: the policy's target becomes the running count at once."""

    def __init__(self, policy: TierPolicy, replicas: int = 1):
        self.policy = policy
        self.target = self.running = replicas
        self.state: dict = {}
        self.now = 1000.0
        self.history: list[int] = []

    def tick(self, metrics: dict[str, float], *, ongoing: float = 0.0, running: int | None = None) -> int:
        self.running = self.target if running is None else running
        ids = [f"r{i}" for i in range(self.running)]
        ctx = SimpleNamespace(
            aggregated_metrics={key: {r: value for r in ids} for key, value in metrics.items()} if ids else {},
            total_num_requests=ongoing,
            current_num_replicas=self.running,
            target_num_replicas=self.target,
            policy_state=dict(self.state),
            current_time=self.now,
            last_scale_up_time=None,
            last_scale_down_time=None,
            deployment_name="pool-x",
        )
        decided, self.state = self.policy(ctx)
        self.target = max(self.policy.rules.min_replicas, min(self.policy.rules.max_replicas, decided))
        self.history.append(self.target)
        self.now += 1.0
        return self.target

    def run(self, samples: Iterable[dict[str, float]], **kw) -> list[int]:
        return [self.tick(m, **kw) for m in samples]


def pool(**rules) -> Controller:
    return Controller(TierPolicy("pool", RULES | rules, POOL_TARGETS), replicas=rules.get("min_replicas", 1) or 1)


IDLE = {KV_USAGE: 0.05, WAITING: 0.0, TTFT_P90_S: 0.0}
KV_HOT = {KV_USAGE: 0.95, WAITING: 0.0, TTFT_P90_S: 0.3}


def test_sustained_kv_pressure_scales_up_after_the_delay() -> None:
    c = pool()
    assert c.run([KV_HOT] * 3) == [1, 1, 1]  # over since tick 0: not yet 3 s
    assert c.tick(KV_HOT) == 2


def test_a_one_sample_spike_does_not_scale() -> None:
    c = pool()
    samples = ([IDLE | {KV_USAGE: 0.7}] * 2 + [KV_HOT]) * 6
    assert set(c.run(samples)) == {1}


def test_waiting_queue_and_ttft_each_scale_up() -> None:
    assert pool().run([IDLE | {WAITING: 9.0}] * 4)[-1] == 3  # 9/4 of target on one replica: ceil(2.25)
    assert pool().run([IDLE | {TTFT_P90_S: 2.5}] * 4)[-1] == 2


def test_scales_down_only_after_the_downscale_delay_and_never_below_min() -> None:
    c = pool()
    c.target = 3
    downs = c.run([IDLE] * 30)
    assert downs[:10] == [3] * 10  # under since tick 0: held for 10 s
    assert downs[10] == 1  # 0.0625 of target on 3 replicas: straight to the floor
    assert min(downs) == 1


def test_not_quite_well_below_holds() -> None:
    c = pool()
    c.target = 2
    assert set(c.run([IDLE | {KV_USAGE: 0.6}] * 40)) == {2}  # 0.75 of target: between the thresholds


def test_never_above_max() -> None:
    c = pool(cooldown_s=0.0, upscale_delay_s=0.0)
    assert max(c.run([IDLE | {WAITING: 100.0}] * 20)) == 4


def test_cooldown_after_a_change() -> None:
    c = pool(upscale_delay_s=0.0, cooldown_s=5.0)
    ups = c.run([KV_HOT | {KV_USAGE: 0.9}] * 12)  # 1.125 of target: one step at a time
    assert ups[0] == 2
    changes = [i for i in range(1, len(ups)) if ups[i] != ups[i - 1]]
    assert changes and all(b - a >= 5 for a, b in zip([0, *changes], changes, strict=False))


def test_no_scale_up_while_replicas_are_starting() -> None:
    c = pool(upscale_delay_s=0.0, cooldown_s=0.0)
    assert c.tick(KV_HOT) == 2
    assert c.run([KV_HOT] * 5, running=1) == [2] * 5  # the second replica has not started yet


def test_candidate_pool_goes_to_zero_only_when_idle() -> None:
    c = pool(min_replicas=0)
    assert c.run([IDLE | {KV_USAGE: 0.0}] * 12, ongoing=1.0)[-1] == 1  # a request still ongoing
    c = pool(min_replicas=0)
    assert c.run([IDLE | {KV_USAGE: 0.0}] * 12)[-1] == 0
    assert c.run([{}] * 5) == [0] * 5  # at zero nothing reports; waking is Serve's (a queued request)


def test_gateway_scales_on_in_flight_per_replica() -> None:
    policy = TierPolicy("gateway", RULES | {"upscale_delay_s": 0.0}, {"in_flight_per_replica": 100.0})
    c = Controller(policy, replicas=2)
    assert c.tick({IN_FLIGHT: 250.0}) == 4  # 2.5 of target on 2 replicas wants 5: capped at 4
    assert c.run([{IN_FLIGHT: 80.0}] * 20) == [4] * 20  # 0.8 of target: holds
    assert gateway_signals({IN_FLIGHT: [10.0, 30.0]}, {"in_flight_per_replica": 100.0}) == {"in_flight": (20.0, 100.0)}


def test_preprocess_scales_on_queue_and_on_cpu() -> None:
    targets = {"ongoing_per_replica": 8.0, "cpu_per_replica": 0.8}
    rules = RULES | {"upscale_delay_s": 0.0}
    by_queue = Controller(TierPolicy("preprocess", rules, targets))
    assert by_queue.tick({CPU: 0.1}, ongoing=20.0) == 3  # 20 ongoing on one replica: 2.5 of target
    by_cpu = Controller(TierPolicy("preprocess", rules, targets))
    assert by_cpu.tick({CPU: 1.0}, ongoing=1.0) == 2
    assert preprocess_signals({}, targets, ongoing=4.0, running=2) == {"ongoing": (2.0, 8.0)}


def test_pool_signals_average_replicas_and_skip_missing() -> None:
    signals = pool_signals({KV_USAGE: [0.2, 0.6], WAITING: [1.0, 3.0]}, POOL_TARGETS)
    assert signals == {"kv_usage": (pytest.approx(0.4), 0.8), "waiting": (2.0, 4.0)}
    assert Pressure.of(signals).value == pytest.approx(0.5)
    assert Pressure.of(signals | {"ttft_p90": (3.0, 2.0)}) == Pressure(1.5, "ttft_p90")
    assert Pressure.of({}) is None


def test_no_reports_hold_and_bounds_apply_first() -> None:
    rules = ScaleRules(**RULES)
    held = decide(rules, ScaleState(), now=0.0, target=2, running=2, pressure=None, ongoing=0.0)
    assert (held.replicas, held.changed) == (2, False)
    raised = decide(rules, ScaleState(), now=0.0, target=0, running=0, pressure=None, ongoing=0.0)
    assert raised.replicas == 1 and raised.changed


def test_state_survives_the_controllers_dict() -> None:
    state = ScaleState(over_since=1.0, under_since=None, last_change=5.0)
    assert ScaleState.from_dict(state.as_dict() | {"serve_internal": 3}) == state


def test_replica_stats_are_plain_floats_and_idle_ttft_is_zero() -> None:
    busy = pool_stats(ReplicaLoad(running=2, waiting=1, kv_usage=0.5, ttft_p90_s=1.5))
    assert busy == {KV_USAGE: 0.5, WAITING: 1.0, TTFT_P90_S: 1.5}
    assert all(type(v) is float for v in busy.values())
    assert pool_stats(ReplicaLoad(ttft_p90_s=9.0))[TTFT_P90_S] == 0.0
    meter = CpuMeter()
    sum(i * i for i in range(200_000))
    assert meter.read() > 0.0


def test_unknown_tier_is_refused() -> None:
    with pytest.raises(ValueError):
        TierPolicy("proxy", RULES, {})
