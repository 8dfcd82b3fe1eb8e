"""What crosses from the engine's policy to the device and back: one step's plan, how each of
its rows is sampled, and the tokens that come back. Plain values, no tensors.

This is the leaf both sides import: `engine/` (scheduler, block manager, the loop) builds
plans; `runner/` and `parallel/` run them behind the `Executor` and `StepRunner` protocols.

Overlap: the engine plans step N+1 while step N still runs, so a decode in N+1 may compute a
token that N has not sampled yet. Its id in the plan is `PENDING`; the runner, which ran N
before N+1 on one thread, fills it in with the token N sampled for that request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from museserve.messages import PreparedRequest

if TYPE_CHECKING:
    from torch import Tensor

PENDING = -1  # the token an earlier, still running step samples for this request


@dataclass(frozen=True, slots=True)
class MediaSlice:
    """Rows of one media segment that fall in one step: `num_rows` float16 rows of `feature_dim`
    (row-major in `rows`), for the step's tokens `offset .. offset + num_rows - 1` (counted
    from the step's first token of this sequence)."""

    kind: str
    offset: int
    num_rows: int
    feature_dim: int
    rows: bytes


@dataclass(frozen=True, slots=True)
class ScheduledSequence:
    request_id: str
    first_position: int  # position of the first token computed this step
    token_ids: tuple[int, ...]  # the tokens computed this step, from first_position on; may end in PENDING
    block_ids: tuple[int, ...]
    samples: bool  # the step reaches the last known token, so it yields the next one
    media: tuple[MediaSlice, ...] = ()  # feature rows of the media placeholders among token_ids
    # Prompt scoring (`sampling.prompt_logprobs`): the step's tokens targets_from .. targets_from +
    # len(prompt_targets) - 1 each get logits too, and prompt_targets[i] is the prompt token that
    # follows the i-th of them; its log probability comes back, with prompt_top alternatives.
    prompt_targets: tuple[int, ...] = ()
    targets_from: int = 0
    prompt_top: int = 0
    # Speculation: a sampling sequence may be given up to `num_speculative` proposed tokens after
    # its last one, for this step to verify. The scheduler reserves their KV slots and budget; the
    # runner's proposer fills them in (`num_draft` of them, appended to token_ids), so the step
    # computes token_ids whole and returns a logits row for each of its last 1 + num_draft tokens.
    num_speculative: int = 0
    num_draft: int = 0
    lora_slot: int = -1  # the slot of its LoRA adapter in the replica (`lora.weights`); -1: the base model

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_logits_rows(self) -> int:
        """Rows of the step's sampling logits this sequence owns: its last token and its drafts."""
        return 1 + self.num_draft if self.samples else 0


@dataclass(frozen=True, slots=True)
class SchedulerPlan:
    sequences: tuple[ScheduledSequence, ...]
    preempted: tuple[str, ...]
    # Copies between the KV pool and its second tier, run before the step: all saves, then all
    # loads (`engine.block_manager` says why that order is safe). Empty without a tier.
    kv_saves: tuple[tuple[int, int], ...] = ()  # (block id, tier slot): an evicted cached block kept
    kv_loads: tuple[tuple[int, int], ...] = ()  # (tier slot, block id): a prefix block brought back

    @property
    def num_batched_tokens(self) -> int:
        """Tokens the step computes, the slots reserved for proposals included."""
        return sum(s.num_new_tokens - s.num_draft + s.num_speculative for s in self.sequences)

    @property
    def is_empty(self) -> bool:
        return not self.sequences


@dataclass(frozen=True, slots=True)
class RowSampling:
    """How one row of the step's logits becomes a token; fixed when the step is planned."""

    request_id: str
    logits_row: int  # its row in the executor's logits
    sampler: object  # the runner's per-request state (`StepRunner.prepare`), opaque to the engine
    token_ids: Sequence[int]  # the sequence's known tokens; only appended to
    num_prompt_tokens: int
    num_known_tokens: int  # len(token_ids) when the step was planned
    num_pending: int  # tokens an earlier step samples first (0 or 1): the output's true tail
    forced_token: int | None  # taken instead of sampling, unless it is the pending token itself


@dataclass(frozen=True, slots=True)
class RowToken:
    token: int
    logprob: float | None = None  # the chosen token's, when the request asked for log probabilities
    top: tuple[tuple[int, float], ...] = ()  # (token id, log probability), most likely first
    steered: bool = False  # a grammar is closing the answer to fit its budget (finish: LENGTH)
    # Speculation: the proposed tokens the step accepted, in order, which come before `token`
    # (the one the target chose at the first rejection, or after the last proposal), and how
    # many were proposed. A row without proposals has neither.
    accepted: tuple[RowToken, ...] = ()
    num_proposed: int = 0

    @property
    def tokens(self) -> list[int]:
        """Every token the row yields, in order."""
        return [*(t.token for t in self.accepted), self.token]


class Executor(Protocol):
    """Runs the model over a plan: in this process (`runner.ModelRunner`) or across workers."""

    num_blocks: int  # KV blocks each worker's pool holds; the block manager hands out these ids
    # Media kind -> feature values per token the model projects; executors of text-only models may omit it.
    media_feature_dims: Mapping[str, int]
    on_accelerator: bool  # the model computes on a GPU, apart from the host's cores; may be omitted (False)
    kv_tier_slots: int  # blocks its second KV tier holds (the plan's kv_saves/kv_loads slots); may be omitted (0)

    def execute(self, plan: SchedulerPlan) -> Tensor:
        """Runs the plan (no PENDING left in it): its tier copies, then its step. Returns float32
        logits, already computed: each sampling sequence's `num_logits_rows` in plan order, then
        one per scored prompt position (`ScheduledSequence.prompt_targets`) in plan order."""
        ...


class AdapterLeases(Protocol):
    """A replica's LoRA adapters as the engine uses them (`lora.manager.AdapterManager`)."""

    async def acquire(self, name: str) -> int:
        """The slot holding adapter `name`, kept for the caller until `release`; NotFound,
        FailedPrecondition or Unavailable when it cannot be had."""
        ...

    def release(self, slot: int) -> None: ...

    def served(self, name: str, prompt_tokens: int, generated_tokens: int) -> None:
        """A request with adapter `name` ended: its tokens, for the adapter's metrics."""
        ...

    def resident(self) -> list[str]:
        """The adapters loaded now."""
        ...

    async def configure(self, keep: list[str], disabled: list[str]) -> None:
        """An operator's wishes: `keep` loaded and never evicted, `disabled` refused."""
        ...


class StepRunner(Protocol):
    """The device side of an engine: runs each step's model and sampling on one thread, in order."""

    num_blocks: int
    media_feature_dims: Mapping[str, int]
    on_accelerator: bool  # its executor's: host work overlapped with a step then runs beside it, not on its cores
    kv_tier_slots: int  # its executor's; may be omitted (0: no second tier)

    async def prepare(self, request: PreparedRequest) -> object:
        """A request's sampling state (generator, penalties, grammar): the `sampler` of its rows.
        Raises InvalidArgument for an output shape its budget cannot hold."""
        ...

    def submit(self, plan: SchedulerPlan, rows: list[RowSampling]) -> Future[list[RowToken]]:
        """Queues a step behind the ones submitted before; one token per entry of `rows`, then
        one per scored prompt position in plan order (the target token with its logprob)."""
        ...

    def shutdown(self, wait: bool = False) -> None: ...
