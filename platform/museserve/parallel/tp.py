"""Tensor parallelism through DeepSpeed-Inference: one torch.distributed world per TP group.

Each TP group (the ranks of one pipeline stage) is a world of its own: world size = TP size,
its own MASTER_PORT, LOCAL_SIZE = world size. DeepSpeed's shared-memory all-reduce on CPU
ignores process sub-groups (it would sum across the whole world) and, without LOCAL_SIZE,
crashes at the first all-reduce. Its segments are named by MASTER_ADDR and MASTER_PORT, so a
rebuilt group takes a fresh port, and each rank unlinks its own segment once all ranks have
mapped it: a killed worker leaves nothing behind in /dev/shm.

The op is compiled by g++ on first use (~35-50 s) into TORCH_EXTENSIONS_DIR; `extensions_dir`
points at a cache inside the virtual environment, filled once by `make install`
(`python -m museserve.parallel.prebuild`).
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch

from museserve.model.muse import DecoderLayer, MuseForCausalLM

SHM_PREFIX = "deepspeed_allreduce_buffer"  # DeepSpeed's name of its shared-memory workspaces
# Row-parallel linears (input-sharded, all-reduced after); every other Linear of a
# DecoderLayer (q, k, v, gate, up) is column-parallel (output-sharded).
INJECTION_POLICY = {DecoderLayer: ("self_attn.o_proj", "mlp.down_proj")}


def extensions_dir() -> Path:
    """Where DeepSpeed's compiled ops are cached: TORCH_EXTENSIONS_DIR when set, else inside
    the running virtual environment, where `make install` prebuilds them."""
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(configured) if configured else Path(sys.prefix) / "torch-extensions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def group_environment(rank: int, world_size: int, master_addr: str, master_port: int, cuda: bool) -> dict[str, str]:
    """The variables DeepSpeed and torch.distributed read for one rank of a TP group. On a GPU
    each worker sees only its own device (Ray sets CUDA_VISIBLE_DEVICES), so its local rank is 0."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": "0" if cuda else str(rank),
        "LOCAL_SIZE": str(world_size),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCH_EXTENSIONS_DIR": str(extensions_dir()),
    }


def join_group(env: dict[str, str], cuda: bool, timeout_s: float) -> None:
    """Joins this process's TP world (blocks until every rank has joined)."""
    os.environ.update(env)
    import deepspeed

    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo",
        auto_mpi_discovery=False,
        timeout=timedelta(seconds=timeout_s),
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
    )
    torch.distributed.barrier()  # every rank has mapped every other rank's shm segment
    _unlink_own_segment(env)


def shard_model(model: MuseForCausalLM, tensor: int, dtype: torch.dtype) -> MuseForCausalLM:
    """AutoTP with our decoder layer's policy; reads the head counts from `model.config`."""
    import deepspeed

    engine = deepspeed.init_inference(
        model,
        tensor_parallel={"tp_size": tensor},
        dtype=dtype,
        replace_with_kernel_inject=False,
        injection_policy=INJECTION_POLICY,
    )
    return engine.module


def leave_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _unlink_own_segment(env: dict[str, str]) -> None:
    name = f"{SHM_PREFIX}_{os.getuid()}_{env['MASTER_ADDR']}_{env['MASTER_PORT']}_{env['RANK']}"
    Path("/dev/shm", name).unlink(missing_ok=True)  # the peers' mappings stay valid
