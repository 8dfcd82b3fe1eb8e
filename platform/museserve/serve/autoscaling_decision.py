"""When a tier scales, as plain functions over plain values: no Ray here, so every rule is
tested on synthetic metric histories (tests/unit/test_autoscaling_policies.py).

A tier's signals become one pressure: the worst ratio of a signal to its target. Each
control tick calls `decide` with the pressure and the state the previous tick returned.

Invariants:
- the result always lies within [min_replicas, max_replicas];
- a change needs its pressure to hold, without a break, for the whole delay (a one-sample
  spike resets nothing but its own tick);
- after a change, nothing changes for `cooldown_s`;
- no scale-up while replicas decided earlier are still starting;
- a tier goes to 0 replicas only when nothing is ongoing; waking from 0 is Serve's
  (a request queued at a handle), never this function's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleRules:
    min_replicas: int
    max_replicas: int
    upscale_delay_s: float
    downscale_delay_s: float
    cooldown_s: float
    downscale_below: float  # pressure under which the tier is well below its targets


@dataclass(frozen=True)
class Pressure:
    """The worst ratio of a signal to its target (1.0: at target) and that signal's name."""

    value: float
    signal: str

    @classmethod
    def of(cls, signals: Mapping[str, tuple[float, float]]) -> Pressure | None:
        """`signals`: name -> (value, target). None when there is nothing measured yet."""
        ratios = [(value / target, name) for name, (value, target) in signals.items() if target > 0]
        if not ratios:
            return None
        value, name = max(ratios)
        return cls(value, name)


@dataclass(frozen=True)
class ScaleState:
    """What a tier remembers between ticks; times on the caller's clock."""

    over_since: float | None = None  # pressure above 1 without a break since
    under_since: float | None = None  # pressure below downscale_below without a break since
    last_change: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"museserve_over_since": self.over_since, "museserve_under_since": self.under_since,
                "museserve_last_change": self.last_change}  # fmt: skip

    @classmethod
    def from_dict(cls, state: Mapping[str, object]) -> ScaleState:
        def read(key: str) -> float | None:
            value = state.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        return cls(read("museserve_over_since"), read("museserve_under_since"), read("museserve_last_change"))


@dataclass(frozen=True)
class Decision:
    replicas: int
    state: ScaleState
    reason: str  # "hold", or why the count changed

    @property
    def changed(self) -> bool:
        return self.reason != "hold"


def decide(
    rules: ScaleRules,
    state: ScaleState,
    *,
    now: float,
    target: int,
    running: int,
    pressure: Pressure | None,
    ongoing: float,
) -> Decision:
    """`target`: the count decided so far; `running`: replicas serving now; `pressure`: None
    when no replica has reported yet; `ongoing`: requests running or queued for the tier."""
    bounded = min(rules.max_replicas, max(rules.min_replicas, target))
    if bounded != target:
        return Decision(bounded, ScaleState(last_change=now), f"bounds {target} -> {bounded}")
    if pressure is None or target == 0:
        return Decision(target, ScaleState(last_change=state.last_change), "hold")
    over = pressure.value > 1.0
    under = pressure.value < rules.downscale_below
    state = ScaleState(
        over_since=(state.over_since if state.over_since is not None else now) if over else None,
        under_since=(state.under_since if state.under_since is not None else now) if under else None,
        last_change=state.last_change,
    )
    if state.last_change is not None and now - state.last_change < rules.cooldown_s:
        return Decision(target, state, "hold")
    if over and running >= target and now - state.over_since >= rules.upscale_delay_s:
        wanted = min(rules.max_replicas, max(target + 1, math.ceil(target * pressure.value)))
        if wanted > target:
            return Decision(wanted, ScaleState(last_change=now), f"{pressure.signal} at {pressure.value:.2f} of target")
    if under and now - state.under_since >= rules.downscale_delay_s:
        wanted = max(rules.min_replicas, min(target - 1, math.ceil(target * pressure.value)))
        if wanted == 0 and ongoing > 0:
            wanted = 1
        if wanted < target:
            return Decision(wanted, ScaleState(last_change=now), f"{pressure.signal} at {pressure.value:.2f} of target")
    return Decision(target, state, "hold")
