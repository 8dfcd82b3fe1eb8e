"""The arithmetic of a parallel replica, with no tensors and no Ray: which layers each
pipeline stage holds, which heads each tensor-parallel rank holds, how a step's plan is cut
into micro-batches.

Invariants: stages hold contiguous, non-empty layer ranges that cover the model in order;
TP rank r of t holds query heads [r * H/t, (r+1) * H/t) and KV heads [r * K/t, (r+1) * K/t),
so each local query head's KV head (GQA: h // (H/K)) is local too. This is the split
DeepSpeed AutoTP makes of q/k/v/o when t divides K (it cuts in units of whole KV groups).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import accumulate

from museserve.engine.plan import SchedulerPlan
from museserve.model.config import MuseConfig, check_parallel


def stage_layers(num_layers: int, pipeline: int) -> tuple[range, ...]:
    """Contiguous layer ranges, one per stage; the first `num_layers % pipeline` stages take one more."""
    if not 1 <= pipeline <= num_layers:
        raise ValueError(f"{pipeline} stages cannot split {num_layers} layers")
    base, extra = divmod(num_layers, pipeline)
    sizes = [base + (1 if stage < extra else 0) for stage in range(pipeline)]
    starts = list(accumulate(sizes, initial=0))
    return tuple(range(starts[s], starts[s + 1]) for s in range(pipeline))


def head_range(num_heads: int, tensor: int, rank: int) -> range:
    """The heads (query or KV) TP rank `rank` of `tensor` holds."""
    if num_heads % tensor or not 0 <= rank < tensor:
        raise ValueError(f"rank {rank} of {tensor} cannot hold an equal share of {num_heads} heads")
    share = num_heads // tensor
    return range(rank * share, (rank + 1) * share)


def shard_architecture(arch: MuseConfig, tensor: int, layers: range) -> MuseConfig:
    """The shape of one worker's KV cache: its stage's layers, its share of the KV heads.
    head_dim stays the model's (resolved in MuseConfig, so it survives the head split)."""
    return replace(
        arch,
        num_hidden_layers=len(layers),
        num_attention_heads=arch.num_attention_heads // tensor,
        num_key_value_heads=arch.num_key_value_heads // tensor,
    )


def split_plan(plan: SchedulerPlan, parts: int) -> tuple[SchedulerPlan, ...]:
    """Contiguous runs of the plan's sequences with near-equal token counts, at most `parts`
    and none empty. Concatenating their sampled rows gives the plan's rows in plan order."""
    sequences = plan.sequences
    parts = max(1, min(parts, len(sequences)))
    if parts == 1:
        return (plan,)
    total = plan.num_batched_tokens
    cuts, done = [0], 0
    for index, item in enumerate(sequences):
        done += item.num_new_tokens
        left_items, left_parts = len(sequences) - index - 1, parts - len(cuts)
        # Cut once this run reaches its share of the tokens, or when the items left only just suffice.
        if (
            left_parts > 0
            and left_items >= left_parts
            and (done >= total * len(cuts) / parts or left_items == left_parts)
        ):
            cuts.append(index + 1)
    cuts.append(len(sequences))
    return tuple(
        SchedulerPlan(sequences[a:b], plan.preempted if a == 0 else ()) for a, b in zip(cuts, cuts[1:], strict=False)
    )


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One worker of a replica: TP rank `tp_rank` of stage `stage`."""

    stage: int
    tp_rank: int
    tensor: int
    pipeline: int
    layers: range

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.pipeline - 1

    @property
    def name(self) -> str:
        return f"stage{self.stage}-tp{self.tp_rank}"


def replica_workers(arch: MuseConfig, tensor: int, pipeline: int) -> tuple[tuple[WorkerSpec, ...], ...]:
    """Per stage, its TP ranks' specs."""
    check_parallel(arch, tensor, pipeline)
    return tuple(
        tuple(WorkerSpec(stage, rank, tensor, pipeline, layers) for rank in range(tensor))
        for stage, layers in enumerate(stage_layers(arch.num_hidden_layers, pipeline))
    )
