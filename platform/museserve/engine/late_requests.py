"""Which requests can no longer be served in time, found in one pass before each plan.

A request still queued for its first token is late once its own prefill, at the replica's
measured rate, would end past its deadline (DEADLINE_EXCEEDED) or past its tier's first-token
deadline (RESOURCE_EXHAUSTED, with a retry delay of the queue's drain time): ending it then
spends no prefill on an answer nobody can use. Its cached prefix is looked up only when the
cheap estimate (every uncomputed token) already says late, and at most once a second. Any
other request is late at its deadline. No tensors.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from museserve.engine.load_meter import LoadMeter
from museserve.engine.request import Request
from museserve.engine.scheduler import Scheduler
from museserve.errors import DeadlineExceeded, MuseError

MAX_RETRY_AFTER_S = 60.0  # the most a request ended for its objective is told to wait
UNCACHED_LOOKUP_S = 1.0  # how long a queued request's cached-prefix lookup stands


class LateRequests:
    def __init__(self, scheduler: Scheduler, meter: LoadMeter) -> None:
        self._scheduler = scheduler
        self._meter = meter

    def find(self, requests: Iterable[Request], now_unix_s: float) -> Iterator[tuple[Request, MuseError, str | None]]:
        """(request, its error, the drop reason: "deadline" or "objective" for one that never
        started, None for one past its deadline after it did)."""
        rate = self._meter.prefill_tokens_per_s  # 0.0 unmeasured: a prefill counts as instant

        def prefill_s(tokens: int) -> float:
            return tokens / rate if rate > 0 else 0.0

        for request in list(requests):
            if not request.queued_before_first_token:
                if now_unix_s > request.prepared.deadline_unix_s:
                    yield request, DeadlineExceeded("the request ran past its deadline"), None
            elif request.too_late_to_start(now_unix_s, prefill_s(request.seq.num_uncomputed_tokens)):
                needs_s = prefill_s(self._uncached_tokens(request))
                reason = request.too_late_to_start(now_unix_s, needs_s)
                if reason is not None:
                    yield request, request.late_error(reason, now_unix_s, needs_s, self._queue_drain_s()), reason

    def _uncached_tokens(self, request: Request) -> int:
        """Its tokens past the prefix the cache holds, looked up at most once a second: a lookup
        walks the prompt's blocks."""
        now = time.monotonic()
        if request.uncached_lookup is None or now - request.uncached_lookup[1] >= UNCACHED_LOOKUP_S:
            request.uncached_lookup = (self._scheduler.tokens_to_compute(request.seq), now)
        return request.uncached_lookup[0]

    def _queue_drain_s(self) -> float:
        """How long the queue takes to empty at the recent finish rate; 1 s when unmeasured."""
        finishes_per_s = self._meter.finishes_per_s
        if finishes_per_s <= 0:
            return 1.0
        return min(max(1.0, self._scheduler.num_waiting / finishes_per_s), MAX_RETRY_AFTER_S)
