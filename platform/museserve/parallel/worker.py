"""The Ray actor of one worker: TP rank `tp_rank` of pipeline stage `stage`.

Two-phase start: the constructor only records its spec (so the executor can ask rank 0 for
an address first); `setup` joins the TP group, loads the worker's share of the weights and
allocates its KV cache shard. Ray runs one call at a time per actor, in submission order:
every rank of a TP group sees the same steps in the same order, so their all-reduces pair up.
"""

from __future__ import annotations

import os
import resource

import torch
from torch import Tensor

from museserve.config import ModelConfig
from museserve.engine.plan import SchedulerPlan
from museserve.model.config import MuseConfig
from museserve.model.cpu_linear import weight_bytes
from museserve.model.loader import resolve_device
from museserve.parallel import tp
from museserve.parallel.plan import WorkerSpec
from museserve.parallel.stage import StageRunner, build_stage_model


class StageWorker:
    def __init__(
        self,
        spec: WorkerSpec,
        arch: MuseConfig,
        model: ModelConfig,
        num_blocks: int,
        block_size: int,
        kv_cache_dtype: str | None = None,
    ):
        """`kv_cache_dtype`: the pool's (`PoolConfig.kv_cache_dtype`); None: the model's dtype."""
        self.spec = spec
        self.arch = arch
        self.model_config = model
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_cache_dtype = kv_cache_dtype or model.dtype
        self.runner: StageRunner | None = None

    def address(self) -> tuple[str, int]:
        """Where this worker's TP group meets when this worker is its rank 0: this node, a free port."""
        import ray

        return ray.util.get_node_ip_address(), tp.free_port()

    def setup(self, master_addr: str, master_port: int, timeout_s: float) -> dict[str, int]:
        spec, config = self.spec, self.model_config
        device = resolve_device(config.device)
        if device.type == "cpu":  # the node's cores shared among the replica's workers
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // (spec.tensor * spec.pipeline)))
        dtype = getattr(torch, config.dtype)
        if spec.tensor > 1:
            env = tp.group_environment(spec.tp_rank, spec.tensor, master_addr, master_port, device.type == "cuda")
            tp.join_group(env, device.type == "cuda", timeout_s)
        model = build_stage_model(
            spec,
            self.arch,
            load_format=config.load_format,
            seed=config.seed,
            path=config.path,
            dtype=dtype,
            device=device,
            cpu_gemm=config.cpu_gemm,
        )
        if spec.tensor > 1:
            model = tp.shard_model(model, spec.tensor, dtype)
        kv_dtype = getattr(torch, self.kv_cache_dtype)
        self.runner = StageRunner(spec, model, self.arch, self.num_blocks, self.block_size, kv_dtype=kv_dtype)
        return self.memory()

    def forward(self, plan: SchedulerPlan, hidden: Tensor | None) -> Tensor | None:
        """The stage's output for the next stage, or on the last stage the logits (rank 0 only:
        every TP rank computes the same all-reduced logits, one copy travels)."""
        out = self.runner.forward(plan, hidden)
        return None if self.spec.is_last and self.spec.tp_rank else out

    def memory(self) -> dict[str, int]:
        runner = self.runner
        weights = weight_bytes(runner.model) if runner else 0
        return {
            "weight_bytes": weights,
            "kv_cache_bytes": runner.pool.num_bytes if runner else 0,
            "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }

    def stop(self) -> None:
        tp.leave_group()
