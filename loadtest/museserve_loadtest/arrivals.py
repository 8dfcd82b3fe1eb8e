"""Arrival schedules for an open-loop run, drawn in advance from a seeded RNG.

Open loop: a request's send time is fixed before the run starts and never depends on how
fast earlier requests came back. Poisson arrivals have exponential gaps (CV 1); gamma
gaps with shape k have the same mean 1/rate and CV 1/sqrt(k): k < 1 is burstier than
Poisson, k > 1 smoother.
"""

from __future__ import annotations

import math

import numpy as np

ARRIVALS = ("poisson", "gamma")


def gamma_shape_for_cv(cv: float) -> float:
    if cv <= 0:
        raise ValueError("the coefficient of variation must be > 0")
    return 1.0 / cv**2


def inter_arrivals(
    rate: float, n: int, arrival: str = "poisson", gamma_shape: float = 1.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """`n` gaps in seconds with mean 1/rate."""
    if rate <= 0:
        raise ValueError("the rate must be > 0")
    rng = rng if rng is not None else np.random.default_rng(0)
    if arrival == "poisson":
        return rng.exponential(1.0 / rate, size=n)
    if arrival == "gamma":
        if gamma_shape <= 0:
            raise ValueError("the gamma shape must be > 0")
        return rng.gamma(gamma_shape, 1.0 / (rate * gamma_shape), size=n)
    raise ValueError(f"unknown arrival process {arrival!r} (one of {', '.join(ARRIVALS)})")


def schedule(
    rate: float,
    duration_s: float,
    max_requests: int | None = None,
    arrival: str = "poisson",
    gamma_shape: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Send offsets from the run's start, ascending, all < duration_s and at most max_requests
    of them: whichever bound comes first ends the schedule."""
    if duration_s <= 0:
        raise ValueError("the duration must be > 0")
    rng = np.random.default_rng(seed)
    offsets: list[float] = []
    t = 0.0
    # Draw in chunks of about the expected count plus slack, until past the duration.
    chunk = max(16, math.ceil(rate * duration_s * 1.2) + 16)
    while True:
        for gap in inter_arrivals(rate, chunk, arrival, gamma_shape, rng):
            t += float(gap)
            if t >= duration_s or (max_requests is not None and len(offsets) >= max_requests):
                return offsets
            offsets.append(t)
