"""N-gram prompt lookup: the last n tokens of a sequence (n from `max_n` down to `min_n`) are
looked up in its prompt and output so far, and the tokens that followed their latest earlier
occurrence are proposed. No weights: it pays where the output quotes the input (code edits,
extraction, summaries that cite, answers that repeat the question), and proposes nothing
elsewhere, which costs nothing.

Each request's tokens are kept in a numpy buffer (on its `RequestSampler`) that only grows, so
a lookup costs a vectorised scan of the context, not a copy of it.
"""

from __future__ import annotations

import numpy as np

from museserve.engine.plan import RowSampling, SchedulerPlan
from museserve.runner.proposer import Proposal
from museserve.runner.request_sampler import RequestSampler


class TokenBuffer:
    """A request's known tokens as int64, appended to as they become known."""

    def __init__(self) -> None:
        self.array = np.empty(1024, dtype=np.int64)
        self.length = 0

    def sync(self, token_ids: list[int], num_known: int) -> np.ndarray:
        """The first `num_known` of `token_ids` (a list that is only appended to)."""
        if num_known > self.array.shape[0]:
            grown = np.empty(max(num_known, 2 * self.array.shape[0]), dtype=np.int64)
            grown[: self.length] = self.array[: self.length]
            self.array = grown
        if num_known > self.length:
            self.array[self.length : num_known] = token_ids[self.length : num_known]
        self.length = num_known
        return self.array[:num_known]


def lookup(tokens: np.ndarray, max_n: int, min_n: int, k: int) -> tuple[int, ...]:
    """Up to `k` tokens following the latest earlier occurrence of the longest suffix of
    `tokens` (between min_n and max_n long) that occurs earlier; () when none does."""
    length = tokens.shape[0]
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n :]
        # Starts i with tokens[i : i + n] == suffix and at least one token after: i <= length - n - 1.
        starts = np.flatnonzero(tokens[: length - n] == suffix[0])
        for offset in range(1, n):
            if starts.size == 0:
                break
            starts = starts[tokens[starts + offset] == suffix[offset]]
        if starts.size:
            follow = int(starts[-1]) + n
            return tuple(int(t) for t in tokens[follow : follow + k])
    return ()


class NgramProposer:
    def __init__(self, max_n: int, min_n: int):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.max_n = max_n
        self.min_n = min_n

    def propose(self, plan: SchedulerPlan, rows: list[RowSampling]) -> dict[str, Proposal]:
        slots = {item.request_id: item.num_speculative for item in plan.sequences if item.num_speculative}
        proposals: dict[str, Proposal] = {}
        for row in rows:
            k = slots.get(row.request_id, 0)
            if not k:
                continue
            sampler: RequestSampler = row.sampler
            if not isinstance(sampler.proposer_state, TokenBuffer):
                sampler.proposer_state = TokenBuffer()
            tokens = sampler.proposer_state.sync(row.token_ids, row.num_known_tokens)  # type: ignore[arg-type]
            found = lookup(tokens, self.max_n, self.min_n, k)
            if found:
                proposals[row.request_id] = Proposal(found)
        return proposals
