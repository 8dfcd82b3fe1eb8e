"""The pure parts of parallel replicas: layer ranges, head shards, micro-batches, config checks."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from museserve.config import PoolConfig
from museserve.engine.block_manager import BlockManager
from museserve.engine.plan import ScheduledSequence, SchedulerPlan
from museserve.engine.sequence import Sequence
from museserve.model.config import MuseConfig
from museserve.model.muse import MuseForCausalLM
from museserve.parallel.plan import (
    check_parallel,
    head_range,
    replica_workers,
    shard_architecture,
    split_plan,
    stage_layers,
)
from museserve.parallel.stage import prune_to_stage
from museserve.parallel.tp import group_environment

SMALL = MuseConfig.named("small", vocab_size=1000)  # 8 layers, 8 heads, 2 KV heads


@pytest.mark.parametrize(("layers", "stages"), [(2, 1), (2, 2), (8, 3), (32, 5), (80, 8), (7, 7)])
def test_stages_cover_the_layers_in_order(layers: int, stages: int) -> None:
    ranges = stage_layers(layers, stages)
    assert len(ranges) == stages
    assert [i for r in ranges for i in r] == list(range(layers))
    sizes = [len(r) for r in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the extra layers go to the first stages


def test_more_stages_than_layers_is_refused() -> None:
    with pytest.raises(ValueError, match="3 stages cannot split 2 layers"):
        stage_layers(2, 3)


@pytest.mark.parametrize("tensor", [1, 2])
def test_each_rank_holds_the_kv_heads_its_query_heads_read(tensor: int) -> None:
    heads, kv_heads = SMALL.num_attention_heads, SMALL.num_key_value_heads
    group = heads // kv_heads
    seen_q, seen_kv = [], []
    for rank in range(tensor):
        q, kv = head_range(heads, tensor, rank), head_range(kv_heads, tensor, rank)
        assert {h // group for h in q} == set(kv)  # GQA: query head h reads KV head h // group
        seen_q += list(q)
        seen_kv += list(kv)
    assert seen_q == list(range(heads)) and seen_kv == list(range(kv_heads))


def test_a_shard_architecture_sizes_the_worker_kv_cache() -> None:
    layers = stage_layers(SMALL.num_hidden_layers, 2)[1]
    shard = shard_architecture(SMALL, 2, layers)
    assert (shard.num_hidden_layers, shard.num_attention_heads, shard.num_key_value_heads) == (4, 4, 1)
    assert shard.head_dim == SMALL.head_dim
    # tensor x pipeline workers together hold exactly the whole model's KV cache.
    assert 2 * 2 * shard.kv_cache_bytes_per_token(2) == SMALL.kv_cache_bytes_per_token(2)


def test_check_parallel_names_what_does_not_divide() -> None:
    check_parallel(SMALL, 2, 8)
    with pytest.raises(ValueError, match=r"parallel.tensor \(4\) must divide the model's 2 KV heads"):
        check_parallel(SMALL, 4, 1)
    with pytest.raises(ValueError, match=r"parallel.tensor \(3\) must divide the model's 8 attention heads"):
        check_parallel(SMALL, 3, 1)
    with pytest.raises(ValueError, match=r"parallel.pipeline \(9\) exceeds the model's 8 layers"):
        check_parallel(SMALL, 1, 9)


def test_the_pool_config_validates_parallel_against_the_model() -> None:
    pool = PoolConfig(name="p", model={"size": "tiny"}, parallel={"tensor": 2, "pipeline": 2})
    assert pool.parallel.world_size == 4
    with pytest.raises(ValidationError, match="must divide the model's 2 KV heads"):
        PoolConfig(name="p", model={"size": "tiny"}, parallel={"tensor": 4})
    with pytest.raises(ValidationError, match="exceeds the model's 2 layers"):
        PoolConfig(name="p", model={"size": "tiny"}, parallel={"pipeline": 3})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        PoolConfig(name="p", parallel={"tensor": 0})


def _plan(*lengths: int) -> SchedulerPlan:
    items = tuple(ScheduledSequence(f"r{i}", 0, (5,) * n, (i,), samples=True) for i, n in enumerate(lengths))
    return SchedulerPlan(items, preempted=("gone",))


@pytest.mark.parametrize(
    ("lengths", "parts", "expected"),
    [
        ((1, 1, 1, 1), 2, [2, 2]),
        ((10, 1, 1, 1), 2, [1, 3]),
        ((1, 1, 1, 10), 2, [3, 1]),
        ((5,), 2, [1]),
        ((3, 3, 3), 1, [3]),
        ((1, 1, 1, 1, 1, 1), 3, [2, 2, 2]),
        ((20, 20, 1), 3, [1, 1, 1]),
    ],
)
def test_micro_batches_are_contiguous_balanced_and_never_empty(lengths, parts, expected) -> None:
    plan = _plan(*lengths)
    pieces = split_plan(plan, parts)
    assert [len(p.sequences) for p in pieces] == expected
    assert tuple(s for p in pieces for s in p.sequences) == plan.sequences  # rows stay in plan order
    assert [p.preempted for p in pieces] == [("gone",)] + [()] * (len(pieces) - 1)


def test_replica_workers_and_prune_keep_each_stage_its_own_modules() -> None:
    tiny = MuseConfig.named("tiny", vocab_size=64)
    stages = replica_workers(tiny, 2, 2)
    assert [[w.name for w in stage] for stage in stages] == [["stage0-tp0", "stage0-tp1"], ["stage1-tp0", "stage1-tp1"]]
    names = {}
    for spec in (stages[0][0], stages[1][0]):
        with torch.device("meta"):
            model = MuseForCausalLM(tiny)
        prune_to_stage(spec)(model)
        names[spec.stage] = {n for n, _ in model.named_parameters()}
    assert "model.embed_tokens.weight" in names[0] and "lm_head.weight" not in names[0]
    assert "lm_head.weight" in names[1] and "model.embed_tokens.weight" not in names[1]
    assert {n.split(".")[2] for n in names[0] if n.startswith("model.layers.")} == {"0"}
    assert {n.split(".")[2] for n in names[1] if n.startswith("model.layers.")} == {"1"}


def test_each_tp_group_is_its_own_local_world() -> None:
    env = group_environment(1, 2, "10.0.0.7", 29511, cuda=False)
    assert env["WORLD_SIZE"] == env["LOCAL_SIZE"] == "2"  # without LOCAL_SIZE DeepSpeed's shm all-reduce crashes
    assert (env["RANK"], env["LOCAL_RANK"], env["MASTER_PORT"]) == ("1", "1", "29511")
    assert group_environment(1, 2, "h", 1, cuda=True)["LOCAL_RANK"] == "0"  # one visible GPU per worker


def test_dropping_the_prefix_cache_forgets_every_block() -> None:
    blocks = BlockManager(8, 2)
    seq = Sequence("a", [1, 2, 3, 4, 5], cache_salt="t")
    blocks.admit(seq, [], 5)
    seq.num_computed_tokens = 5
    blocks.cache_computed_blocks(seq)
    blocks.free(seq)
    again = Sequence("b", [1, 2, 3, 4, 5], cache_salt="t")
    assert len(blocks.cached_prefix(again)) == 2
    blocks.drop_prefix_cache()
    assert blocks.cached_prefix(again) == []
