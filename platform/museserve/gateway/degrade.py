"""Cheaper versions of a request, for a tier whose policy degrades under overload instead of
refusing (`TierConfig.degrade`). Pure: the gateway decides when, this says what.

Only reasoning costs are cut: Instant requests have nothing to give. A degraded request says
how (`Degradation.describe`), and the response carries that, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from museserve.config import DegradeConfig, PoolConfig
from museserve.domain import ChatRequest, Mode


@dataclass(frozen=True, slots=True)
class Degradation:
    request: ChatRequest
    changes: tuple[str, ...]  # e.g. ("mode=instant",), ("thinking_budget=256", "agents=2")

    def describe(self) -> str:
        return ",".join(self.changes)

    @property
    def kind(self) -> str:
        """What was cut, without the values: a bounded metric label (e.g. `thinking_budget+agents`)."""
        return "+".join(change.split("=")[0] for change in self.changes)


def degrade(request: ChatRequest, pool: PoolConfig, policy: DegradeConfig) -> Degradation | None:
    """The cheaper request, or None when the policy leaves nothing to cut from it."""
    mode = request.mode
    if mode.mode is Mode.INSTANT:
        return None
    if policy.to_instant and (pool.modes is None or Mode.INSTANT in pool.modes):
        cheaper = replace(mode, mode=Mode.INSTANT, thinking_budget=None, num_agents=None)
        return Degradation(replace(request, mode=cheaper), ("mode=instant",))
    changes: list[str] = []
    budget, agents = mode.thinking_budget, mode.num_agents
    if policy.thinking_budget is not None:
        asked = budget if budget is not None else pool.engine.default_thinking_budget
        if asked > policy.thinking_budget:
            budget = policy.thinking_budget
            changes.append(f"thinking_budget={budget}")
    if mode.mode is Mode.CONTEMPLATING and policy.contemplating_agents is not None:
        asked = agents if agents is not None else pool.contemplating.default_agents
        if asked > policy.contemplating_agents:
            agents = policy.contemplating_agents
            changes.append(f"agents={agents}")
    if not changes:
        return None
    return Degradation(replace(request, mode=replace(mode, thinking_budget=budget, num_agents=agents)), tuple(changes))
