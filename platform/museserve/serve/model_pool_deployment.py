"""A model pool replica: one engine, streaming chunks to the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from museserve.config import MediaLimits, PoolConfig
from museserve.config.lora import AdapterWishes
from museserve.logs import setup_logging
from museserve.lora.metrics import AdapterMetrics
from museserve.messages import GenerationChunk, LiveExtension, LiveOpened, PreparedRequest
from museserve.metrics import EngineMetrics
from museserve.modes.dispatch import ReplicaModes
from museserve.preprocess.pool_model import pool_model
from museserve.replica import build_engine
from museserve.routing.feed import LOAD_STATS_KEY, ROUTING_STATS_KEY
from museserve.routing.publisher import KVFeedPublisher
from museserve.serve.autoscaling_stats import pool_stats


@serve.deployment
class ModelPoolDeployment:
    def __init__(self, pool: PoolConfig, media: MediaLimits, tokenizer_path: str | None, log_level: str = "INFO"):
        """`media`: the preprocess tier's limits, which fix the model's projector input sizes;
        `tokenizer_path`: `preprocess.tokenizer`, for dummy weights (see `pool_model`)."""
        setup_logging(log_level)
        chat_format = pool_model(pool, media, tokenizer_path).chat_format
        adapter_metrics = AdapterMetrics(pool.name) if pool.lora.enabled else None
        self.engine = build_engine(
            pool, chat_format, media=media, metrics=EngineMetrics(pool.name), adapter_metrics=adapter_metrics
        )
        self.modes = ReplicaModes(self.engine, chat_format.tokenizer, pool.contemplating)
        blocks = self.engine.blocks
        self.kv_feed = None
        if pool.routes_by_prefix:
            blocks.kv_events.start()
            self.kv_feed = KVFeedPublisher(
                blocks.kv_events,
                blocks.held_hashes,
                event_batches=pool.routing.event_batches,
                snapshot_every=pool.routing.snapshot_every,
            )

    async def reconfigure(self, user_config: dict) -> None:
        """The deployment's `user_config` from serveConfigV2, applied live by Serve to every
        replica: `{"adapters": {"keep": [...], "disabled": [...]}}` (`museserve ops adapters`)."""
        wishes = AdapterWishes.model_validate(user_config.get("adapters") or {})
        if self.engine.adapters is not None:
            await self.engine.adapters.configure(list(wishes.keep), list(wishes.disabled))
        elif wishes.keep or wishes.disabled:
            raise ValueError(f"pool {self.engine.pool.name} serves no adapters (its lora section is empty)")

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        """A gateway that stops reading cancels this call (Ray cancels the task); the stream's
        cleanup ends the request in the engine at once and frees its blocks."""
        async for chunk in self.modes.generate(request):
            yield chunk

    async def converse(self, request: PreparedRequest) -> AsyncIterator[LiveOpened | GenerationChunk]:
        """A live request (`MuseEngine.generate(live=True)`): first this replica's id, once the
        request is admitted, then its chunks once the prompt is closed. A gateway that stops
        reading cancels the call, which ends the request and frees its blocks at once."""
        opened = False
        async for chunk in self.engine.generate(request, live=True):
            if opened:
                yield chunk
            else:
                opened = True
                yield LiveOpened(serve.get_replica_context().replica_id.unique_id)

    async def extend(self, extension: LiveExtension) -> None:
        """More prompt for a live request this replica holds (routed here by its `replica`)."""
        await self.engine.extend(
            extension.request_id, list(extension.token_ids), extension.media, close=extension.close
        )

    async def record_routing_stats(self) -> dict:
        """Pulled by Serve's controller every `routing.stats_period_s` and pushed to every handle's
        router (`serve.prefix_router`): this replica's load (for routing and the gateways'
        admission) and, where the pool routes by prefix, its KV events. Async on purpose: Serve
        runs a sync method on a thread, and the engine's state belongs to its loop, this one."""
        stats: dict = {LOAD_STATS_KEY: self.engine.load()}
        if self.kv_feed is not None:
            stats[ROUTING_STATS_KEY] = self.kv_feed.publish()
        return stats

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Pulled by Serve for the pool's autoscaling policy (`serve.autoscaling_policies`): KV
        use, requests waiting, TTFT p90. Async for the same reason as `record_routing_stats`."""
        return pool_stats(self.engine.load())

    def stats(self) -> dict:
        """Counters of this replica, including its most recent requests by id."""
        return self.engine.stats.snapshot()

    def __del__(self) -> None:
        self.engine.shutdown()
