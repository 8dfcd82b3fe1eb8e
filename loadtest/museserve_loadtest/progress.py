"""The live progress line on stderr: rewritten in place (`\r`) once a second."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TextIO

import numpy as np

from .records import Sample


class Progress:
    def __init__(self, stream: TextIO):
        self.stream = stream
        self._last_done = 0
        self._last_t = 0.0

    def line(self, samples: Sequence[Sample], now: float) -> str:
        sent = sum(1 for s in samples if s.sent is not None)
        finished = [s for s in samples if s.status is not None]
        errors = sum(1 for s in finished if not s.ok)
        # Current rate: completions since the last line, over the time since it.
        dt = max(now - self._last_t, 1e-9)
        rps = (len(finished) - self._last_done) / dt
        self._last_done, self._last_t = len(finished), now
        ttfts = [s.ttft for s in finished[-200:] if s.ok and s.ttft is not None]
        p50 = f"{np.median(ttfts) * 1000:.0f}ms" if ttfts else "-"
        return (
            f"\r[{now:6.1f}s] sent {sent:6d}  done {len(finished):6d}  errors {errors:5d}  "
            f"rps {rps:6.1f}  ttft p50 {p50:>8}"
        )

    async def tick_every_second(self, samples: Sequence[Sample], clock: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.stream.write(self.line(samples, clock()))
            self.stream.flush()

    def finish(self, samples: Sequence[Sample], clock: Callable[[], float]) -> None:
        self.stream.write(self.line(samples, clock()) + "\n")
        self.stream.flush()
