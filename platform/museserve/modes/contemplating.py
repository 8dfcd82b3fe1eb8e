"""The Contemplating mode, run inside one model replica so its agents share the KV cache.

1. Agent 0 starts first; once its prompt is prefilled (its first chunk arrives) the other
   agents start, and the prefix cache serves them the conversation's blocks: only their
   angle turn is computed. All agents then decode in the same batches.
2. Each agent reasons (its own seed and angle), then answers in at most
   `agent_answer_tokens`. The stream reports their progress, not their text.
3. Once every agent has ended, and at least a quorum answered, a synthesis pass reads the
   answers and streams the final reasoning and answer. Usage sums every pass.
A failed agent is dropped; too few answers fail the request with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator
from typing import Protocol

from museserve.config import ContemplatingConfig
from museserve.domain import AgentProgress, Mode, Usage
from museserve.errors import Cancelled, DeadlineExceeded, Internal, MuseError, Unavailable
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.preprocess.contemplating_prompts import synthesis_prompt
from museserve.preprocess.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class Engine(Protocol):
    def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]: ...


@dataclasses.dataclass
class _Agent:
    request: PreparedRequest
    tokens: int = 0
    answer: list[str] = dataclasses.field(default_factory=list)
    usage: Usage | None = None
    error: MuseError | None = None


class Contemplation:
    def __init__(self, engine: Engine, tokenizer: Tokenizer, config: ContemplatingConfig):
        self._engine = engine
        self._tokenizer = tokenizer
        self._config = config

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        if request.contemplation is None:
            raise Internal("a contemplating request came without its passes' prompts")
        agents = [self._agent(request, i) for i in range(len(request.contemplation.agents))]
        updates: asyncio.Queue[int | None] = asyncio.Queue()
        first_prefilled = asyncio.Event()
        tasks = [asyncio.ensure_future(self._run(agents[0], 0, updates, first_prefilled))]
        try:
            await asyncio.wait([tasks[0], asyncio.ensure_future(first_prefilled.wait())], return_when="FIRST_COMPLETED")
            tasks += [asyncio.ensure_future(self._run(a, i, updates, None)) for i, a in enumerate(agents) if i]
            running = len(agents)
            while running:
                index = await updates.get()
                if index is None:
                    running -= 1
                    continue
                agent = agents[index]
                done = agent.usage is not None or agent.error is not None
                yield GenerationChunk(agent_progress=(AgentProgress(index, agent.tokens, done),))
            async for chunk in self._synthesize(request, agents):
                yield chunk
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _agent(self, request: PreparedRequest, i: int) -> _Agent:
        prompts, sampling = request.contemplation, request.sampling
        assert prompts is not None
        return _Agent(
            dataclasses.replace(
                request,
                request_id=f"{request.request_id}#agent{i}",
                prompt_token_ids=prompts.shared + prompts.agents[i],
                mode=Mode.THINKING if request.thinking_budget else Mode.INSTANT,
                sampling=dataclasses.replace(
                    sampling,
                    max_output_tokens=min(request.max_output_tokens, self._config.agent_answer_tokens),
                    seed=None if sampling.seed is None else sampling.seed + i,
                    logprobs=False,
                    top_logprobs=0,
                ),
                num_agents=0,
                contemplation=None,
            )
        )

    async def _run(self, agent: _Agent, index: int, updates: asyncio.Queue, prefilled: asyncio.Event | None) -> None:
        """Streams one agent; every chunk is an update, the end is a `None`."""
        try:
            async for chunk in self._engine.generate(agent.request):
                if prefilled is not None:
                    prefilled.set()
                agent.tokens += chunk.num_new_tokens
                agent.answer.append(chunk.text)
                if chunk.finish is not None:
                    agent.usage = chunk.usage or Usage()
                updates.put_nowait(index)
        except (Cancelled, DeadlineExceeded):
            raise
        except MuseError as e:
            logger.warning("request %s: agent %d failed: %s", agent.request.request_id, index, e.code.name)
            agent.error = e
            updates.put_nowait(index)
        finally:
            if prefilled is not None:
                prefilled.set()
            updates.put_nowait(None)

    async def _synthesize(self, request: PreparedRequest, agents: list[_Agent]) -> AsyncIterator[GenerationChunk]:
        prompts = request.contemplation
        assert prompts is not None
        answered = [a for a in agents if a.usage is not None]
        needed = max(1, math.ceil(self._config.quorum * len(agents)))
        if len(answered) < needed:
            raise Unavailable(f"only {len(answered)} of {len(agents)} agents answered; {needed} are needed")
        budget = prompts.synthesis_thinking_budget
        answers = ["".join(a.answer) for a in answered]
        synthesis = dataclasses.replace(
            request,
            request_id=f"{request.request_id}#synthesis",
            prompt_token_ids=synthesis_prompt(prompts, answers, self._tokenizer, self._config.agent_answer_tokens),
            mode=Mode.THINKING if budget > 0 else Mode.INSTANT,
            thinking_budget=budget,
            num_agents=0,
            contemplation=None,
        )
        spent = sum((a.usage for a in answered), Usage())
        async for chunk in self._engine.generate(synthesis):
            if chunk.finish is not None:
                chunk = dataclasses.replace(chunk, usage=spent + (chunk.usage or Usage()))
            yield chunk
