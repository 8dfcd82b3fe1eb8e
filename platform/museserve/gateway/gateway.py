"""The gateway's request path as a plain class.

identify -> route (mode, LoRA adapter, A/B) -> validate -> admission slot (the hard cap) -> the pool's live
state (refuse at once, or degrade) -> prepare (tokens) -> the live state with the prompt
(refuse, or admit with a first-token deadline) -> rate limit (one decision, prompt tokens
charged) -> stream from the pool -> settle the output tokens (also when the stream is cut
short) -> hand the primary's answer to the mirror when the request was sampled.

Every limit is checked before the charge: validation caps max_output_tokens below each pool's
context window, and `prepare` refuses a prompt plus output over it (INVALID_ARGUMENT), so a
refused request costs the caller no quota. The windows (`pool_model.pool_windows`) are what
ListModels reports.

It talks to the other tiers through two small protocols, so tests build it with the
preprocess and engine objects directly, and the Serve deployment with Ray handles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from museserve.config import MuseServeConfig, PoolConfig
from museserve.domain import ChatRequest, ChatResult, Identity, ModelInfo, StreamEvent
from museserve.errors import MuseError, ResourceExhausted, Unauthenticated, Unavailable
from museserve.gateway.adapters import AdapterAccess
from museserve.gateway.admission import AdmissionControl
from museserve.gateway.capture import StreamCapture
from museserve.gateway.conversations import ConversationStore, MemoryConversations, new_response_id
from museserve.gateway.events import ResultFold, StreamEvents
from museserve.gateway.identity import Authenticator, Credentials
from museserve.gateway.live_admission import LiveAdmission
from museserve.gateway.mirror import Mirror
from museserve.gateway.observer import CountingObserver, GatewayObserver
from museserve.gateway.overload import OverloadGate
from museserve.gateway.pool_loads import PoolLoads
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.routing import Router
from museserve.gateway.validation import validate_request
from museserve.messages import GenerationChunk, PreparedRequest, PromptCount
from museserve.preprocess.pool_model import check_pools, pool_windows
from museserve.preprocess.pool_preprocessors import PoolPreprocessors

logger = logging.getLogger(__name__)

# Response metadata for the API edge: pairs of (key, value).
MetadataSink = Callable[[Sequence[tuple[str, str]]], None]


class PreprocessClient(Protocol):
    async def prepare(self, request: ChatRequest, pool: str) -> PreparedRequest: ...

    async def count(self, request: ChatRequest, pool: str) -> PromptCount: ...


class PoolClient(Protocol):
    def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]: ...


class Conversations(Protocol):
    """Stored answers a follow-up continues (`ChatRequest.previous_response_id`, `store`)."""

    async def resolve(self, request: ChatRequest) -> ChatRequest:
        """The request with its instructions and the stored conversation before its new turn;
        NotFound when the id is unknown, expired or another tenant's."""
        ...

    async def save(self, asked: ChatRequest, resolved: ChatRequest, result: ChatResult, response_id: str) -> None:
        """Keeps `resolved`'s conversation and its answer under `response_id`; `asked`: the request
        as sent, before `resolve`."""
        ...

    async def close(self) -> None: ...


class Gateway:
    def __init__(
        self,
        config: MuseServeConfig,
        preprocess: PreprocessClient,
        pools: Mapping[str, PoolClient],
        *,
        authenticator: Authenticator | None = None,
        quota: QuotaGuard | None = None,
        mirror: Mirror | None = None,
        observer: GatewayObserver | None = None,
        live: LiveAdmission | None = None,
        conversations: Conversations | None = None,
    ):
        """`live`: the pools' live state (`build_gateway` reads this process's routers' board);
        default: no reports, so only the hard cap bounds. `conversations`: where stored answers
        live (`build_gateway`: the configured store, Redis across replicas); default: this
        process's memory."""
        missing = {p.name for p in config.pools} - set(pools)
        if missing:
            raise ValueError(f"no client for pools: {', '.join(sorted(missing))}")
        config = check_pools(config)  # each pool's modes, from its checkpoint
        self.config = config
        self.windows = pool_windows(config)
        for pool in config.pools:
            window = self.windows[pool.name]
            logger.info("pool %s: %s", pool.name, window.describe())
            if window.max_output_tokens < pool.engine.max_output_tokens:
                logger.warning("pool %s: engine.max_output_tokens %d is clamped to %d, below its context window",
                               pool.name, pool.engine.max_output_tokens, window.max_output_tokens)  # fmt: skip
        self._preprocess = preprocess
        self._pools = pools
        self.adapters = AdapterAccess(config)
        self.router = Router(config, self.adapters)
        self.admission = AdmissionControl(config.pools, config.gateway)
        self.authenticator = authenticator or Authenticator(config.gateway)
        self.quota = quota or QuotaGuard(config.gateway)
        self.mirror = mirror
        self.observer = observer or CountingObserver()
        live = live or LiveAdmission(config.pools, config.gateway, PoolLoads())
        self.overload = OverloadGate(live, config.gateway, self.observer)
        self.conversations = conversations or ConversationStore(MemoryConversations(), config.gateway.conversations)
        self._settlements: set[asyncio.Task] = set()
        self._preprocessors: PoolPreprocessors | None = None

    def list_models(self, caller: Identity | None = None) -> list[tuple[ModelInfo, bool]]:
        """The served models, default first, and whether each is the default; with `caller`, each
        with the adapters that caller may use (without, none: the pools' stores are not read)."""
        default = self.config.default_pool.name
        pools = sorted(self.config.pools, key=lambda p: p.name != default)
        windows = self.windows
        return [
            (
                ModelInfo(
                    p.name,
                    windows[p.name].tokens,
                    windows[p.name].max_output_tokens,
                    p.modes,
                    self.adapters.usable(p.name, caller) if caller is not None else (),
                ),
                p.name == default,
            )
            for p in pools
        ]

    async def identify(self, credentials: Credentials) -> Identity:
        try:
            return await self.authenticator.identify(credentials)
        except Unauthenticated:
            self.observer.decision("unauthenticated", "")
            raise

    async def count_tokens(self, request: ChatRequest) -> PromptCount:
        if request.previous_response_id or request.instructions:
            request = await self.conversations.resolve(request)  # the whole prompt a follow-up sends
        route = self.router.route(request)
        self.validate(request, route.pool)
        return await self._preprocess.count(request, route.pool.name)

    async def stream(self, request: ChatRequest, on_metadata: MetadataSink | None = None) -> AsyncIterator[StreamEvent]:
        """Events in order (`events.StreamEvents`): deltas, then one Usage, then one Finish.
        Errors are MuseErrors."""
        arrived = time.time()
        asked = request
        if request.previous_response_id or request.instructions or request.store:
            request = await self.conversations.resolve(request)  # before any check: they see the whole prompt
        route = self.router.route(request)
        pool = route.pool.name
        request = replace(request, adapter=route.adapter)  # the caller's default filled in
        self.validate(request, route.pool)
        identity = request.identity
        with self.admitted(pool, identity.tier):
            deadline = request.deadline_unix_s or arrived + self.config.server.request_timeout_s
            request, degraded = self.overload.before_prepare(request, route.pool, deadline)
            prepared = await self._preprocess.prepare(request, pool)  # refuses what exceeds the window
            prepared = self.overload.admit(prepared, identity.tier, arrived)
            metadata = await self.charge(identity, prepared.num_prompt_tokens)  # only after every check
            how = degraded.describe() if degraded is not None else ""
            events = StreamEvents(prepared, pool, how, request.usage_in_stream)
            fold = ResultFold() if request.store else None
            if request.store:
                events.response_id = new_response_id()
            if on_metadata is not None:
                extra = (("x-museserve-degraded", how),) if how else ()
                if route.adapter:
                    extra += (("x-museserve-adapter", route.adapter),)
                if events.response_id:
                    extra += (("x-museserve-response-id", events.response_id),)
                on_metadata((("x-served-by", pool), *extra, *metadata))
            ticket = self.mirror.start(request, pool, route.mirror) if self.mirror and route.mirror else None
            capture = StreamCapture(pool, keep_text=ticket is not None)
            try:
                async for chunk in self._pools[pool].generate(prepared):
                    capture.observe(chunk)
                    out = events.of(chunk)
                    if fold is not None:
                        for event in out:
                            fold.add(event)
                        if chunk.finish is not None:  # kept before the client hears it ended
                            await self.conversations.save(asked, request, fold.result(), events.response_id)
                    for event in out:
                        yield event
                if not capture.finish:
                    logger.warning("request %s: pool %s (adapter %s) ended its stream without finishing",
                                   request.request_id, pool, route.adapter or "none")  # fmt: skip
                    raise Unavailable(f"model {pool} ended the stream early; the request may be retried")
                capture.end("OK")
            except MuseError as e:
                capture.end(e.code.name)
                raise
            finally:
                capture.end("CANCELLED")  # no-op unless the caller went away
                self.settle_later(identity, capture.output_tokens)
                if ticket is not None:
                    ticket.primary_ended(capture)

    def live_preprocessors(self) -> PoolPreprocessors:
        """Each pool's preprocessor in this process: voice turns' prompts are rendered here (text
        and speech placeholders; the speech itself is encoded as it arrives, `voice.session`)."""
        if self._preprocessors is None:
            self._preprocessors = PoolPreprocessors(self.config)
        return self._preprocessors

    def pool_client(self, pool: str) -> PoolClient:
        return self._pools[pool]

    async def chat(self, request: ChatRequest, on_metadata: MetadataSink | None = None) -> ChatResult:
        fold = ResultFold()
        async for event in self.stream(request, on_metadata):
            fold.add(event)
        return fold.result()

    async def drain(self, timeout_s: float) -> int:
        """Refuses new requests (UNAVAILABLE) and waits up to `timeout_s` for those in
        flight; returns how many had not finished."""
        self.admission.start_draining()
        in_flight = self.admission.total_in_flight
        left = await self.admission.wait_idle(timeout_s)
        logger.info("gateway drained: %d requests in flight at the start, %d unfinished after %.0f s",
                    in_flight, left, timeout_s)  # fmt: skip
        return left

    async def close(self) -> None:
        """Flushes pending output-token settlements, then closes the mirror and the quota backend."""
        await asyncio.gather(*self._settlements, return_exceptions=True)
        if self.mirror is not None:
            await self.mirror.close()
        await self.quota.close()
        await self.conversations.close()

    def validate(self, request: ChatRequest, pool: PoolConfig) -> None:
        cap = self.windows[pool.name].max_output_tokens
        validate_request(request, pool, self.config.gateway.limits, max_output_tokens=cap)

    def admitted(self, pool: str, tier: str):
        try:
            return self.admission.enter(pool, tier)
        except ResourceExhausted:
            self.observer.decision("shed", tier)
            raise
        except Unavailable:
            self.observer.decision("draining", tier)
            raise

    async def charge(self, identity: Identity, prompt_tokens: int) -> tuple[tuple[str, str], ...]:
        try:
            admission = await self.quota.admit(identity, prompt_tokens)
        except ResourceExhausted:
            self.observer.decision("limited", identity.tier)
            raise
        except Unavailable:
            self.observer.decision("unavailable", identity.tier)
            raise
        self.observer.decision("admitted", identity.tier)
        self.observer.tokens(identity.tenant, "prompt", prompt_tokens)
        return admission.metadata

    def settle_later(self, identity: Identity, output_tokens: int) -> None:
        """Charges output tokens in a task of its own: a cancelled stream cannot await."""
        if output_tokens <= 0:
            return
        self.observer.tokens(identity.tenant, "output", output_tokens)
        task = asyncio.get_running_loop().create_task(self.quota.settle(identity, output_tokens))
        self._settlements.add(task)
        task.add_done_callback(self._settlements.discard)
