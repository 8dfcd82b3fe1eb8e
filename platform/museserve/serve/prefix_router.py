"""The model pools' request router on Ray Serve's request-router API: each request goes to the
replica whose KV cache holds the longest prefix of its prompt, within a load gap; otherwise
(and always for a pool whose `routing.policy` is power_of_two), as Serve's default does, to
the less busy of two replicas drawn at random.

Every pool uses it, because it also receives the replicas' load reports: it hands them to this
process's `gateway.pool_loads.POOL_LOADS`, from which the gateway admits requests. Serve ships
this class to the handles by value (cloudpickle), which copies the objects its module names
but not modules: so the board is reached through its module, and is the one the gateway reads.

Serve builds one per handle to a pool deployment (each gateway replica holds one per pool,
the A/B candidate and mirror pools included), from the pool's `RequestRouterConfig`
(`serve.app.pool_router_config`). Replicas' feeds arrive with the replica set Serve's
controller pushes (`update_replicas`, every `routing.stats_period_s`). The decisions live in
`routing.PrefixRouting`, which tests build without Ray.

A request for a LoRA adapter that no replica holds the prefix of goes, where it can, to a
replica that already holds the adapter (`routing.adapter_affinity`): a cold load is the
exception. Requests are matched to replicas by their own id (no FIFO reassignment, unlike Serve's
power-of-two router): a replica chosen for one prompt's prefix must serve that prompt.

A live request's extensions (`LiveExtension`: speech arriving) go to the replica that holds it.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict

from ray.serve._private.common import ReplicaID
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import RequestRouter

from museserve.gateway import pool_loads
from museserve.messages import LiveExtension, PreparedRequest, ReplicaLoad
from museserve.routing.adapter_affinity import warm_replicas
from museserve.routing.choice import Reason
from museserve.routing.feed import LOAD_STATS_KEY, ROUTING_STATS_KEY, KVFeed
from museserve.routing.prefix_routing import Decision, PrefixRouting, RoutingSettings
from museserve.serve.router_metrics import RouterMetrics

logger = logging.getLogger(__name__)

MAX_REMEMBERED = 4096  # decisions awaiting their request's send (a cancelled one never is)


class PrefixCacheRouter(RequestRouter):
    def initialize_state(
        self,
        *,
        pool: str,
        by_prefix: bool,
        block_size: int,
        min_hit_tokens: int,
        max_load_gap: int,
        kv_saturation: float,
    ) -> None:
        self.pool = pool
        self.by_prefix = by_prefix
        self.routing = PrefixRouting(RoutingSettings(block_size, min_hit_tokens, max_load_gap, kv_saturation))
        self.metrics = RouterMetrics(pool)
        self._decisions: OrderedDict[str, tuple[Decision, float]] = OrderedDict()  # request id -> (decision, s)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        running = set()
        for replica in replicas:
            replica_id = replica.replica_id.unique_id
            running.add(replica_id)
            load = replica.routing_stats.get(LOAD_STATS_KEY)
            if isinstance(load, ReplicaLoad):
                self.routing.observe_load(replica_id, load)
            feed = replica.routing_stats.get(ROUTING_STATS_KEY)
            if isinstance(feed, KVFeed):
                applied = self.routing.observe(replica_id, feed)
                if applied.staleness_s or applied.resynced:
                    self.metrics.applied(list(applied.staleness_s), applied.resynced, self.routing.index.num_blocks)
        self.routing.keep_only(running)
        pool_loads.POOL_LOADS.publish(self.pool, self.routing.loads)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.routing.forget(replica_id.unique_id)
        pool_loads.POOL_LOADS.publish(self.pool, self.routing.loads)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        """Ranks: the chosen holder first (Serve moves on to the next rank when it is full),
        then two replicas at random (`_power_of_two`)."""
        if not candidate_replicas:
            return []
        request = pending_request.args[0] if pending_request is not None and pending_request.args else None
        if isinstance(request, LiveExtension):
            # Only the replica holding the live request can take it; if that one is gone, any
            # replica answers NOT_FOUND at once (better than waiting for a replica that is no more).
            pinned = [r for r in candidate_replicas if r.replica_id.unique_id == request.replica]
            return [pinned or candidate_replicas]
        if not isinstance(request, PreparedRequest) or not (self.by_prefix or request.adapter):
            return [self._power_of_two(candidate_replicas)]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        in_flight = {rid: self._in_flight(r) for rid, r in by_id.items()}
        chosen: list[RunningReplica] = []
        if self.by_prefix:
            started = time.perf_counter()
            decision = self.routing.decide(request, in_flight)
            self._remember(pending_request.metadata.internal_request_id, decision, time.perf_counter() - started)
            if decision.choice.replica in by_id:
                chosen = [by_id[decision.choice.replica]]
        if not chosen and request.adapter:
            warm = warm_replicas(request.adapter, self.routing.loads, in_flight, self.routing.settings.max_load_gap)
            chosen = self._power_of_two([by_id[rid] for rid in warm]) if warm else []
        if not chosen:
            return [self._power_of_two(candidate_replicas)]
        others = [r for r in candidate_replicas if r not in chosen]
        return [chosen, self._power_of_two(others)] if others else [chosen]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: object) -> None:
        remembered = self._decisions.pop(pending_request.metadata.internal_request_id, None)
        if remembered is None:
            return
        decision, seconds = remembered
        reason = decision.choice.reason
        if reason is Reason.PREFIX_HIT and decision.choice.replica != replica_id.unique_id:
            reason = Reason.LOAD_FALLBACK  # the holder was full when Serve asked it
        held = decision.held_by(replica_id.unique_id)
        self.metrics.routed(reason, decision.prompt_blocks, held, decision.random_held, seconds)
        logger.debug("request %s -> replica %s: %s, %d of %d blocks held", pending_request.metadata.request_id,
                     replica_id.unique_id, reason.value, held, decision.prompt_blocks)  # fmt: skip

    def _power_of_two(self, replicas: list[RunningReplica]) -> list[RunningReplica]:
        """Two at random, the emptier cache first: Serve takes the one with fewer requests in
        flight, and on a tie the first, so a prefix nobody holds yet goes where it evicts least
        and new prefixes spread over the replicas instead of piling onto one by chance."""
        pair = random.sample(replicas, 2) if len(replicas) > 2 else list(replicas)
        return sorted(pair, key=lambda r: self.routing.index.num_held(r.replica_id.unique_id))

    def _in_flight(self, replica: RunningReplica) -> int:
        """Serve's own count where it has a fresh one (it counts this router's sends at once),
        else what the replica last published."""
        queue_len = self.replica_queue_len_cache.get(replica.replica_id)
        if queue_len is not None:
            return queue_len
        load = self.routing.loads.get(replica.replica_id.unique_id)
        return load.requests if load is not None else 0

    def _remember(self, request_id: str, decision: Decision, seconds: float) -> None:
        first = self._decisions.pop(request_id, None)
        # A retry re-decides on fresher loads; the time is that of the first decision.
        self._decisions[request_id] = (decision, first[1] if first is not None else seconds)
        while len(self._decisions) > MAX_REMEMBERED:
            self._decisions.popitem(last=False)
