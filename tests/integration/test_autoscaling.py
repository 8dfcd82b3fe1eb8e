"""A pool scaled by its own policy on a real local Ray cluster: a step of open-loop load
raises its replicas, quiet brings them back down, and no request is lost on the way. The pool
runs as an app of its own beside the shared app (tests/autoscale_step.py), with delays of
seconds instead of minutes."""

from __future__ import annotations

import asyncio
import time

import pytest

from museserve.config import MuseServeConfig
from tests.autoscale_step import FAST_SCALING, decision_lines, deploy, open_loop, running_replicas, step_config
from tests.support import eventually

pytestmark = pytest.mark.integration

APP = "autoscale-test"
UP_WITHIN_S = 30.0  # from the start of the step to a second replica running
DOWN_WITHIN_S = 30.0  # from the end of the step to one replica


def test_a_load_step_scales_a_pool_up_and_back_down(app_config: MuseServeConfig) -> None:
    from ray import serve

    config = step_config(app_config, APP, FAST_SCALING)
    deploy(config)
    try:
        assert running_replicas(APP) == 1
        up_at: list[float] = []
        polled = [0.0]

        def stop(elapsed: float) -> bool:
            if not up_at and elapsed - polled[0] >= 0.5:  # serve.status() is a call to the controller
                polled[0] = elapsed
                if running_replicas(APP) >= 2:
                    up_at.append(elapsed)
            # Keep the load on a little after the new replica serves, so it takes some of it.
            return elapsed > UP_WITHIN_S or (bool(up_at) and elapsed > up_at[0] + 2.0)

        outcomes = asyncio.run(open_loop(APP, rate_per_s=6.0, stop=stop, tokens=64))
        assert up_at, f"still {running_replicas(APP)} replica(s) {UP_WITHIN_S:g} s into the step"
        lost = [o.error for o in outcomes if not o.ok]
        assert not lost, f"{len(lost)} of {len(outcomes)} requests lost: {lost[:3]}"

        quiet_from = time.monotonic()
        eventually(lambda: running_replicas(APP) == 1, DOWN_WITHIN_S, "the pool back at one replica")
        print(f"up {up_at[0]:.1f} s into the step, down {time.monotonic() - quiet_from:.1f} s after it, "
              f"{len(outcomes)} requests")  # fmt: skip

        eventually(lambda: len(decision_lines()) >= 2, 10, "both decisions in the controller's log")
        lines = decision_lines()
        assert any("1 -> 2 replicas" in line for line in lines), lines
        assert any("2 -> 1 replicas" in line for line in lines), lines
    finally:
        serve.delete(APP, _blocking=True)
