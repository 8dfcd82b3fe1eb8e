"""A plain generation loop: one sequence per forward pass, a contiguous KV cache each.

It serves the full request path (admission, reasoning budget, stop strings, streaming,
cancellation, deadlines) with a simple model step; the continuous-batching engine keeps
this interface (`generate`, `abort`, `stats`) and replaces the inside.

Model steps run one at a time on a single worker thread (one device, one stream of
work); concurrent requests interleave step by step. The event loop stays free, so a
cancelled request stops at its next step and frees its cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from museserve.config import PoolConfig
from museserve.engine.request_state import RequestState
from museserve.engine.sampler import make_generator, sample_next_token
from museserve.engine.stats import EngineStats, RequestPhase, RequestRecord
from museserve.errors import Cancelled, DeadlineExceeded, ResourceExhausted
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.model import MuseConfig, MuseForCausalLM, SequenceKVCache, build_model, load_config_json
from museserve.preprocess.tokenizer import MuseTokenizer

logger = logging.getLogger(__name__)

PREFILL_CHUNK_TOKENS = 2048  # bounds attention memory of one prefill step


class PlainEngine:
    def __init__(self, pool: PoolConfig, tokenizer: MuseTokenizer):
        self.pool = pool
        self.tokenizer = tokenizer
        self.model = _load_model(pool, tokenizer)
        self._dtype = getattr(torch, pool.model.dtype)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{pool.name}")
        self._slots = asyncio.Semaphore(pool.engine.max_running_requests)
        self._aborted: set[str] = set()
        self.stats = EngineStats()

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        engine = self.pool.engine
        if (
            self.stats.num_running >= engine.max_running_requests
            and self.stats.num_waiting >= engine.max_waiting_requests
        ):
            self.stats.num_rejected += 1
            raise ResourceExhausted(f"model {self.pool.name} is at capacity", retry_after_s=1.0)
        record = self.stats.admit(request.request_id, request.tenant)
        phase = RequestPhase.FAILED
        try:
            async with self._slots:
                self.stats.start(record)
                async for chunk in self._run(request, record):
                    if chunk.finish is not None:
                        phase = RequestPhase.FINISHED
                    yield chunk
        except (asyncio.CancelledError, GeneratorExit, Cancelled, DeadlineExceeded):
            if phase is not RequestPhase.FINISHED:
                phase = RequestPhase.CANCELLED
            raise
        finally:
            self._aborted.discard(request.request_id)
            self.stats.end(record, phase)
            logger.info(
                "request %s tenant=%s %s after %d tokens",
                request.request_id,
                request.tenant,
                phase,
                record.generated_tokens,
            )

    def abort(self, request_id: str) -> None:
        """Stops a request at its next step; its stream ends with CANCELLED."""
        self._aborted.add(request_id)

    async def _run(self, request: PreparedRequest, record: RequestRecord) -> AsyncIterator[GenerationChunk]:
        state = RequestState(request, self.tokenizer)
        cache = SequenceKVCache.for_model(self.model.config, dtype=self._dtype)
        generator = make_generator(request.seed)
        prompt = request.prompt_token_ids
        logits = None
        for start in range(0, len(prompt), PREFILL_CHUNK_TOKENS):
            self._check_alive(request)
            logits = await self._step(prompt[start : start + PREFILL_CHUNK_TOKENS], start, cache)
        interval_s = self.pool.engine.stream_interval_ms / 1000
        last_sent = None
        while True:
            self._check_alive(request)
            token = state.forced_token()
            if token is None:
                token = sample_next_token(
                    logits,
                    temperature=request.temperature,
                    top_p=request.top_p,
                    top_k=request.top_k,
                    generator=generator,
                )
            state.append(token)
            self.stats.count_tokens(record, 1)
            if state.finish is None and state.num_tokens >= self.pool.engine.context_length:
                state.end_for_length()
            now = time.monotonic()
            if state.finish is not None or last_sent is None or now - last_sent >= interval_s:
                last_sent = now
                yield state.take_chunk()
            if state.finish is not None:
                return
            logits = await self._step((token,), state.num_tokens - 1, cache)

    def _check_alive(self, request: PreparedRequest) -> None:
        if request.request_id in self._aborted:
            raise Cancelled("the request was cancelled")
        if time.time() > request.deadline_unix_s:
            raise DeadlineExceeded("the request ran past its deadline")

    async def _step(self, token_ids: Sequence[int], first_position: int, cache: SequenceKVCache) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._forward_last_logits, token_ids, first_position, cache)

    @torch.inference_mode()
    def _forward_last_logits(
        self, token_ids: Sequence[int], first_position: int, cache: SequenceKVCache
    ) -> torch.Tensor:
        ids = torch.tensor(token_ids, dtype=torch.long)
        positions = torch.arange(first_position, first_position + len(token_ids), dtype=torch.long)
        hidden = self.model(self.model.embed(ids), positions, cache)
        return self.model.compute_logits(hidden[-1:])[0]  # [vocab], float32

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _load_model(pool: PoolConfig, tokenizer: MuseTokenizer) -> MuseForCausalLM:
    spec = pool.model
    if spec.load_format == "safetensors":
        arch = load_config_json(spec.path)
    else:
        arch = MuseConfig.named(spec.size, vocab_size=tokenizer.vocab_size)
    if arch.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab ({arch.vocab_size}) is smaller than the tokenizer's ({tokenizer.vocab_size})")
    return build_model(
        arch, load_format=spec.load_format, seed=spec.seed, dtype=getattr(torch, spec.dtype), path=spec.path
    )
