"""One request as the scheduler sees it: tokens, how many have KV, and its blocks.

No tensors and no text: the scheduler and the block manager work on these alone.
Invariants: `num_computed_tokens <= num_computable_tokens <= num_tokens`; KV for token i lives in block
`block_ids[i // block_size]` at offset `i % block_size`. `num_tokens` counts the
`num_pending` tokens that steps still running will sample, after the known `token_ids`:
`num_computed_tokens` runs ahead of what the device has finished by those steps.

A live sequence (`prompt_open`) has a prompt that grows while it runs (speech arriving as
audio tokens, `extend_prompt`): it prefills what it has but its last token, and samples nothing
until the prompt is closed, so the step that follows the close always computes at least one
token and samples from its logits.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence as Seq

from museserve.engine.speculation import Speculation
from museserve.messages import MediaSegment


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Seq[int],
        *,
        cache_salt: str,
        priority: int = 0,
        max_num_tokens: int | None = None,
        media: tuple[MediaSegment, ...] = (),
        prompt_logprobs: int | None = None,
        speculation: Speculation | None = None,
        lora_slot: int = -1,
        prompt_open: bool = False,
    ):
        if not prompt_token_ids:
            raise ValueError("a sequence needs at least one prompt token")
        # The most tokens it may hold (prompt + generation); None: one generated token.
        self.max_num_tokens = max_num_tokens or len(prompt_token_ids) + 1
        self.request_id = request_id
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.cache_salt = cache_salt  # prefix-cache namespace: one per tenant
        # Images / audio over prompt placeholders; kept through preemption so recompute sees them.
        self.media = media
        self.priority = priority  # lower runs first
        # Score every prompt token (with this many alternatives): the prompt is computed in
        # full, never served from the prefix cache, until every position has been scored once.
        self.prompt_logprobs = prompt_logprobs
        self.num_scored_positions = 0  # prompt positions whose next token's logprob came back
        self.speculation = speculation  # None: it never has tokens proposed
        self.lora_slot = lora_slot  # the replica's slot of its adapter, pinned while it lives; -1: none
        self.prompt_open = prompt_open  # live: more prompt tokens may come (`extend_prompt`)
        self.arrival = 0  # set by the scheduler on arrival; ties within a priority: earlier first
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache at first admission
        self.num_preemptions = 0
        self.num_pending = 0  # tokens sampled by steps still running (0 to 2), not yet in token_ids
        self.block_ids: list[int] = []
        # The block manager's memo: hashes of its first full blocks (hash i covers block i), and
        # per block index with media, the extra bytes its hash takes.
        self.block_hashes: list[bytes] = []
        self.media_keys: dict[int, bytes] | None = None

    @property
    def scores_prompt(self) -> bool:
        """Prompt positions are still to be scored (`prompt_logprobs`)."""
        return self.prompt_logprobs is not None and self.num_scored_positions < self.num_prompt_tokens - 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def num_computable_tokens(self) -> int:
        """Tokens a step may compute up to: all, or all but the last while the prompt is open."""
        return self.num_tokens - 1 if self.prompt_open else self.num_tokens

    def extend_prompt(self, token_ids: Seq[int], media: tuple[MediaSegment, ...], *, close: bool) -> None:
        """More prompt of a live sequence (nothing sampled yet, so the tokens go after the prompt).
        `media` lies in the new tokens: hashes of full blocks already computed stay valid."""
        assert self.prompt_open and self.num_tokens == self.num_prompt_tokens, "only an open prompt grows"
        self.token_ids.extend(token_ids)
        self.num_prompt_tokens += len(token_ids)
        self.max_num_tokens += len(token_ids)
        if media:
            self.media = (*self.media, *media)
            self.media_keys = None  # the block manager's memo: recomputed with the new segments
        self.prompt_open = not close

    @property
    def num_prefill_tokens_left(self) -> int:
        """Tokens its prefill still has to compute; 0 once it decodes (a decode computes exactly one)."""
        remaining = self.num_uncomputed_tokens
        return remaining if remaining > 1 else 0

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.priority, self.arrival)

    def append_token(self, token_id: int) -> None:
        """The oldest pending token, now sampled (or a token appended with none pending)."""
        self.token_ids.append(token_id)
        self.num_pending = max(0, self.num_pending - 1)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
            f"pending={self.num_pending}, computed={self.num_computed_tokens}, blocks={len(self.block_ids)})"
        )
