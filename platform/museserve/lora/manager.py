"""A replica's adapters: brought in when a request first needs one, kept while requests use it,
evicted (least recently used, idle only) when another needs the room.

Runs on the engine's event loop. Reading and checking an adapter's files runs on a worker
thread; placing its weights runs on the device thread (`place`), between steps, so no step
reads a slot while it changes. A load is a task of its own: a request that stops waiting
(its client left, or its time ran out) never interrupts it for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from museserve.config.lora import LoraConfig
from museserve.errors import FailedPrecondition, NotFound, Unavailable
from museserve.lora.metrics import AdapterRecorder, InMemoryAdapterMetrics
from museserve.lora.peft_files import AdapterError, LoraAdapter, read_adapter
from museserve.lora.registry import AdapterRegistry
from museserve.lora.slots import AdapterSlots, Claim
from museserve.model.config import MuseConfig

logger = logging.getLogger(__name__)

Place = Callable[[int, LoraAdapter], Awaitable[None]]


class AdapterManager:
    def __init__(
        self,
        pool: str,
        config: LoraConfig,
        base: MuseConfig,
        place: Place,
        metrics: AdapterRecorder | None = None,
    ):
        self.pool = pool
        self.config = config
        self.base = base
        self.registry = AdapterRegistry(config)
        self.slots = AdapterSlots(config.max_loaded_adapters)
        self.metrics = metrics or InMemoryAdapterMetrics()
        self.disabled: frozenset[str] = frozenset()  # refused until enabled again (`configure`)
        self._place = place
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._freed = asyncio.Event()  # set, and replaced, whenever a slot may have become free

    async def acquire(self, name: str) -> int:
        """The slot holding `name`, pinned until `release`: NotFound for an adapter the pool does
        not serve, FailedPrecondition for one that cannot be served on its base, Unavailable when
        it cannot be brought in within `lora.load_timeout_s`."""
        if name in self.disabled:
            raise NotFound(f"adapter {name!r} of model {self.pool} is disabled", field="adapter")
        deadline = time.monotonic() + self.config.load_timeout_s
        while self.slots.slot_of(name) is None:
            path = self.registry.path(name)
            if path is None:
                raise NotFound(f"model {self.pool} has no adapter {name!r}", field="adapter")
            claim = self.slots.claim(name)
            if claim is not None:
                self._start_load(name, path, claim)
                break
            await self._wait_for_room(name, deadline)
        slot = self.slots.slot_of(name)
        assert slot is not None, "resident, or loading"
        self.slots.pin(slot)
        load = self._loads.get(name)
        if load is not None:
            await self._wait_for_load(name, slot, load, deadline)
        return slot

    def release(self, slot: int) -> None:
        self.slots.unpin(slot)
        self._notify()

    def served(self, name: str, prompt_tokens: int, generated_tokens: int) -> None:
        self.metrics.tokens(name, prompt_tokens, generated_tokens)

    def resident(self) -> list[str]:
        return [name for name, _, _ in self.slots.resident()]

    async def configure(self, keep: list[str], disabled: list[str]) -> None:
        """An operator's wishes (`museserve ops adapters`): adapters in `keep` are loaded now and
        never evicted; those in `disabled` are refused and evicted once idle."""
        self.disabled = frozenset(disabled)
        for name in disabled:
            self.slots.keep(name, False)
            self.evict(name)
        for name, _, _ in self.slots.resident():
            if name not in keep:
                self.slots.keep(name, False)
        for name in keep:
            if name in self.disabled:
                continue
            try:
                slot = await self.acquire(name)
            except (NotFound, FailedPrecondition, Unavailable) as e:
                logger.error("pool %s: adapter %s could not be kept loaded: %s", self.pool, name, e)
                continue
            self.slots.keep(name, True)
            self.release(slot)

    def evict(self, name: str) -> bool:
        evicted = self.slots.evict(name)
        if evicted:
            self.metrics.evicted(name)
            self.metrics.resident(len(self.slots.resident()))
            self._notify()
        return evicted

    def _start_load(self, name: str, path: str, claim: Claim) -> None:
        if claim.evicted is not None:
            logger.info("pool %s: adapter %s evicted for %s", self.pool, claim.evicted, name)
            self.metrics.evicted(claim.evicted)
        task = asyncio.get_running_loop().create_task(self._load(name, path, claim.slot))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved even if nobody waits
        self._loads[name] = task

    async def _load(self, name: str, path: str, slot: int) -> None:
        """Holds its own pin (from `claim`) while it runs."""
        started = time.monotonic()
        try:
            adapter = await asyncio.to_thread(read_adapter, name, path, self.base, self.config.max_rank)
            await self._place(slot, adapter)
        except Exception as e:
            self.slots.abandon(slot)  # the waiters' pins go with it
            self.metrics.load_failed(name)
            logger.error("pool %s: adapter %s refused: %s", self.pool, name, e)
            if isinstance(e, AdapterError):
                raise FailedPrecondition(str(e), field="adapter") from None
            raise Unavailable(f"adapter {name!r} of model {self.pool} could not be loaded: {e}") from None
        finally:
            del self._loads[name]
            self._notify()
        self.slots.mark_loaded(slot)
        self.slots.unpin(slot)
        seconds = time.monotonic() - started
        self.metrics.loaded(name, seconds)
        self.metrics.resident(len(self.slots.resident()))
        logger.info("pool %s: adapter %s (rank %d) loaded in %.0f ms", self.pool, name, adapter.rank, seconds * 1e3)

    async def _wait_for_load(self, name: str, slot: int, load: asyncio.Task[None], deadline: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(load), max(0.0, deadline - time.monotonic()))
        except BaseException as e:
            failed = load.done() and not load.cancelled() and load.exception() is not None
            if not failed:  # the load goes on (or succeeded): this waiter's pin is still there
                self.release(slot)
            if isinstance(e, TimeoutError):
                raise self._timed_out(name, "loading it") from None
            raise

    async def _wait_for_room(self, name: str, deadline: float) -> None:
        freed = self._freed
        try:
            await asyncio.wait_for(freed.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise self._timed_out(
                name, f"every one of its lora.max_loaded_adapters={self.config.max_loaded_adapters} slots is in use"
            ) from None

    def _timed_out(self, name: str, why: str) -> Unavailable:
        return Unavailable(
            f"adapter {name!r} of model {self.pool} could not be brought in within lora.load_timeout_s "
            f"({self.config.load_timeout_s:g} s): {why}"
        )

    def _notify(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()
