"""How many tokens are proposed for each request per step: adaptive, per request. No tensors.

A step verifies a request's proposed tokens in one pass; the first rejected one and all after
it are wasted work (their KV slots are rolled back). So a request proposes as many tokens as
its measured acceptance makes worth it: with a per-token acceptance rate a, the k-th proposal
is reached only when the k - 1 before it were accepted, with probability a^(k-1), so the
lookahead is the largest k whose last proposal still has a fair chance (a^k >= `MIN_REACH`).
A request whose proposals keep failing (a below `min_acceptance`) pauses, for a number of
steps that doubles each time, then tries one token again: proposals cost a draft model's
passes, and an n-gram match that is never right costs verification slots.

Per step, the scheduler speculates only while the batch is small (`max_batch`): a large batch
is compute-bound, and its extra verified tokens would cost about what they save.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_REACH = 0.3  # a proposal is made when the chance that verification reaches it is at least this
EWMA_WEIGHT = 0.25  # weight of the latest step's acceptance in the running rate
MAX_PAUSE_STEPS = 64


@dataclass
class Speculation:
    """One request's speculation: its lookahead and what its proposals achieved."""

    max_tokens: int  # most tokens proposed per step (0: the request does not speculate)
    min_acceptance: float = 0.2
    acceptance: float = 0.6  # running per-token acceptance rate; starts hopeful so a request tries
    # Tokens the next step may propose before a token that must be forced (the reasoning close
    # marker at the thinking budget): a proposal never stands where a forced token goes. None: none ahead.
    cap: int | None = None
    num_proposed: int = 0  # totals over the request
    num_accepted: int = 0
    _paused: int = 0  # steps left without proposals
    _pause_length: int = 1

    def lookahead(self) -> int:
        """Tokens to propose in the next step that samples this request."""
        if self.max_tokens == 0:
            return 0
        if self._paused:
            self._paused -= 1
            return 0
        a = min(max(self.acceptance, 1e-3), 0.999)
        k = min(self.max_tokens, max(1, int(math.log(MIN_REACH) / math.log(a))))
        return k if self.cap is None else max(0, min(k, self.cap))

    def record(self, proposed: int, accepted: int) -> None:
        """A step verified `proposed` tokens of this request and accepted the first `accepted`."""
        if proposed == 0:
            return  # nothing was proposed (an n-gram found no match): nothing learned
        self.num_proposed += proposed
        self.num_accepted += accepted
        # Per-token rate seen in this step: accepted of those verification reached.
        reached = accepted + (1 if accepted < proposed else 0)
        rate = accepted / reached
        self.acceptance = (1 - EWMA_WEIGHT) * self.acceptance + EWMA_WEIGHT * rate
        if self.acceptance < self.min_acceptance:
            self._paused = self._pause_length
            self._pause_length = min(self._pause_length * 2, MAX_PAUSE_STEPS)
            self.acceptance = self.min_acceptance  # the probe after the pause starts from the floor
        elif accepted:
            self._pause_length = 1
