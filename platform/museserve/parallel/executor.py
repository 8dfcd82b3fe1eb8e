"""`RayExecutor`: the engine's `Executor` over a replica of tensor x pipeline Ray workers.

Placement: one placement group per pipeline stage, its TP ranks STRICT_PACKed onto one node
(DeepSpeed's shared-memory all-reduce needs the whole TP world local); stages may land on
different nodes. A step is cut into micro-batches (two when there are stages to overlap);
each micro-batch flows stage to stage as object refs, so a stage's output reaches the next
stage's actors without the driver, and stage s works on micro-batch m+1 while stage s+1
works on m. Only the last stage's rank 0 logits come back.

Faults: a lost worker (dead actor, lost node, or a step past `step_timeout_s`, e.g. a TP peer
stuck in an all-reduce with a dead rank) fails the step with UNAVAILABLE, and the whole
replica is replaced in the background: new actors, reloaded weights, empty KV caches (the
engine drops its prefix cache on UNAVAILABLE). A step meanwhile waits for the rebuild up to
`step_timeout_s` (then UNAVAILABLE, retry later); the rebuild itself is bounded by
`start_timeout_s`. Every wait here is bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import ray
import torch
from ray.exceptions import GetTimeoutError, NodeDiedError, ObjectLostError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from torch import Tensor

from museserve.config import PoolConfig
from museserve.engine.plan import SchedulerPlan
from museserve.errors import Unavailable
from museserve.model.config import MuseConfig
from museserve.parallel.plan import replica_workers, split_plan
from museserve.parallel.worker import StageWorker
from museserve.runner.loading import kv_pool_blocks, start_window

logger = logging.getLogger(__name__)
LOST = (RayActorError, ObjectLostError, NodeDiedError, GetTimeoutError)
_Worker = ray.remote(max_restarts=0)(StageWorker)


class _WorkerLost(Exception):
    pass


class _Replica:
    """One live set of workers: `stages[s][r]` is TP rank r of stage s."""

    def __init__(self, stages: list[list], groups: list):
        self.stages = stages
        self.groups = groups

    def kill(self) -> None:
        for actor in (a for stage in self.stages for a in stage):
            ray.kill(actor, no_restart=True)
        for group in self.groups:
            remove_placement_group(group)


class RayExecutor:
    def __init__(self, pool: PoolConfig, arch: MuseConfig):
        """Starts the workers (bounded by parallel.start_timeout_s); raises Unavailable if they cannot start."""
        self.pool = pool
        self.arch = arch
        self.config = pool.parallel
        self.specs = replica_workers(arch, self.config.tensor, self.config.pipeline)  # ValueError if it cannot split
        # kv_cache_bytes is the replica's: every worker holds these blocks of its own layers and
        # KV heads (`shard_architecture`), together the whole model's blocks (`context_window`).
        self.window = start_window(pool, arch)  # ValueError when the cache is too small
        self.num_blocks = kv_pool_blocks(pool, self.window, arch, getattr(torch, pool.kv_cache_dtype))
        logger.info("pool %s: %d x %d workers, %s", pool.name, self.config.pipeline, self.config.tensor,
                    self.window.describe())  # fmt: skip
        self.media_feature_dims = arch.media_feature_dims
        self.num_microbatches = 2 if self.config.pipeline > 1 else 1
        self.on_accelerator = self._wants_cuda()
        self.builds = 0  # replicas started so far; > 1 after a rebuild
        self._lock = threading.Lock()
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rebuild-{pool.name}")
        self._rebuild: Future[_Replica] | None = None
        self._closed = False
        self._replica: _Replica | None = self._start()

    # -- steps --------------------------------------------------------------------------

    def execute(self, plan: SchedulerPlan) -> Tensor:
        replica = self._current()
        try:
            return self._run(replica, plan)
        except _WorkerLost as exc:
            logger.error("pool %s lost a worker (%s); rebuilding the replica", self.pool.name, exc)
            self._replace(replica)
            raise Unavailable(
                "a worker of the model replica was lost; it is being rebuilt", retry_after_s=1.0
            ) from None

    def _run(self, replica: _Replica, plan: SchedulerPlan) -> Tensor:
        outputs, refs = [], []
        parts = split_plan(plan, self.num_microbatches)
        for part in parts:
            hidden = None  # first stage: the plan's tokens; later ones: the previous stage's rank 0 output
            for stage in replica.stages:
                step = [worker.forward.remote(part, hidden) for worker in stage]
                refs.extend(step)
                hidden = step[0]
            outputs.append(hidden)
        self._wait(refs, time.monotonic() + self.config.step_timeout_s)
        logits = ray.get(outputs)  # per part: its sampling rows, then its scored prompt positions
        if not any(item.prompt_targets for item in plan.sequences):
            return torch.cat(logits)  # [sampled rows in plan order, vocab]
        sampling = [sum(item.num_logits_rows for item in part.sequences) for part in parts]
        return torch.cat([x[:n] for x, n in zip(logits, sampling, strict=True)]
                         + [x[n:] for x, n in zip(logits, sampling, strict=True)])  # fmt: skip

    @staticmethod
    def _wait(refs: list, deadline: float) -> None:
        """Returns when every call has finished; _WorkerLost as soon as one worker is gone or at
        the deadline; an application error of a worker is raised after all calls finished."""
        pending, failure = list(refs), None
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerLost(f"{len(pending)} worker calls still running at the step deadline")
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            for ref in ready:
                try:
                    ray.get(ref, timeout=0)
                except LOST as exc:
                    raise _WorkerLost(type(exc).__name__) from None
                except RayTaskError as exc:
                    if isinstance(exc.cause, LOST):
                        raise _WorkerLost(type(exc.cause).__name__) from None
                    failure = failure or exc
        if failure is not None:
            raise failure

    # -- lifecycle ----------------------------------------------------------------------

    def _start(self) -> _Replica:
        """Places, starts and loads one replica's workers; Unavailable (and nothing left) on failure."""
        started = time.monotonic()
        config, cuda = self.config, self._wants_cuda()
        bundle = {"CPU": max(config.worker_cpus, 1e-3), **({"GPU": 1} if cuda else {})}
        groups = [placement_group([bundle] * config.tensor, strategy="STRICT_PACK") for _ in self.specs]
        replica = _Replica([], groups)
        try:
            ray.get([g.ready() for g in groups], timeout=config.start_timeout_s)
            for group, stage in zip(groups, self.specs, strict=True):
                replica.stages.append(
                    [
                        _Worker.options(
                            num_cpus=bundle["CPU"],
                            num_gpus=bundle.get("GPU", 0),
                            scheduling_strategy=PlacementGroupSchedulingStrategy(
                                group, placement_group_bundle_index=rank
                            ),
                        ).remote(
                            spec,
                            self.arch,
                            self.pool.model,
                            self.num_blocks,
                            self.pool.engine.block_size,
                            self.pool.kv_cache_dtype,
                        )
                        for rank, spec in enumerate(stage)
                    ]
                )
            left = config.start_timeout_s - (time.monotonic() - started)
            addresses = ray.get([stage[0].address.remote() for stage in replica.stages], timeout=left)
            setups = [
                worker.setup.remote(host, port, config.step_timeout_s)
                for stage, (host, port) in zip(replica.stages, addresses, strict=True)
                for worker in stage
            ]
            memory = ray.get(setups, timeout=config.start_timeout_s - (time.monotonic() - started))
        except Exception as exc:
            replica.kill()
            logger.exception("pool %s: the workers did not start", self.pool.name)
            raise Unavailable(f"the model replica's workers did not start: {type(exc).__name__}") from None
        self.builds += 1
        logger.info(
            "pool %s: %d x %d workers up in %.1f s (build %d), %.1f MiB of weights on the largest",
            self.pool.name,
            config.pipeline,
            config.tensor,
            time.monotonic() - started,
            self.builds,
            max(m["weight_bytes"] for m in memory) / 2**20,
        )
        return replica

    def _wants_cuda(self) -> bool:
        device = self.pool.model.device
        return device == "cuda" or (device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)

    def _current(self) -> _Replica:
        with self._lock:
            if self._closed:
                raise Unavailable("the model replica is shutting down")
            if self._replica is not None:
                return self._replica
            rebuild = self._rebuild
        try:  # a step waits for the rebuild as long as for a step; the rebuild goes on
            replica = rebuild.result(timeout=self.config.step_timeout_s)
        except TimeoutError:
            raise Unavailable("the model replica is being rebuilt", retry_after_s=5.0) from None
        except Exception as exc:  # the rebuild failed (it is bounded by start_timeout_s): try again
            with self._lock:
                if self._rebuild is rebuild and not self._closed:
                    self._rebuild = self._builder.submit(self._start)
            raise Unavailable(f"the model replica is being rebuilt ({type(exc).__name__})", retry_after_s=5.0) from None
        with self._lock:
            self._replica = replica
            return replica

    def _replace(self, replica: _Replica) -> None:
        with self._lock:
            if self._replica is not replica or self._closed:
                return
            self._replica = None
            replica.kill()
            self._rebuild = self._builder.submit(self._start)

    def memory(self) -> list[dict[str, int | str]]:
        """Per worker: its name, weight and KV cache bytes, peak resident memory."""
        replica = self._current()
        workers = [w for stage in replica.stages for w in stage]
        stats = ray.get([w.memory.remote() for w in workers], timeout=self.config.step_timeout_s)
        names = [spec.name for stage in self.specs for spec in stage]
        return [{"worker": name, **s} for name, s in zip(names, stats, strict=True)]

    def workers(self) -> list:
        """The live actors, stage-major (for tests that kill one)."""
        return [w for stage in self._current().stages for w in stage]

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            replica, self._replica, rebuild = self._replica, None, self._rebuild
        if replica is not None:
            replica.kill()
        if rebuild is not None:
            rebuild.add_done_callback(lambda f: f.exception() is None and f.result().kill())
        self._builder.shutdown(wait=False)
