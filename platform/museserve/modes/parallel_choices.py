"""n answers to one prompt (`sampling.n`), run inside one model replica so they share its KV.

Answer 0 starts first; once its prompt is prefilled (its first chunk arrives) the others
start, and the prefix cache serves them every full block of the prompt: only the tail of
the last block is computed again. All answers then decode in the same batches. Each has
its own seed (`seed + i` when the request has one), so a seeded request gives the same n
answers every time.

The stream: every chunk names its `choice`; an answer's last chunk carries its
`choice_finish` and its own usage; once all have ended, one last chunk carries `finish` (answer 0's reason)
and the usage: the prompt counted once, the generated tokens of every answer summed. One
answer that fails fails the request; the others are cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol

from museserve.domain import Usage
from museserve.errors import MuseError
from museserve.messages import GenerationChunk, PreparedRequest


class Engine(Protocol):
    def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]: ...


_DONE = object()


class ParallelChoices:
    def __init__(self, engine: Engine):
        self._engine = engine

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        n = request.sampling.n
        answers = [_answer(request, i) for i in range(n)]
        queue: asyncio.Queue[tuple[int, GenerationChunk | MuseError | object]] = asyncio.Queue()
        prefilled = asyncio.Event()
        tasks = [asyncio.ensure_future(self._run(0, answers[0], queue, prefilled))]
        usages: dict[int, Usage] = {}
        first_reason = None
        try:
            running = n
            while running:
                if len(tasks) == 1 and prefilled.is_set():
                    tasks += [asyncio.ensure_future(self._run(i, answers[i], queue, None)) for i in range(1, n)]
                index, item = await queue.get()
                if item is _DONE:
                    running -= 1
                    continue
                if isinstance(item, MuseError):
                    raise item
                assert isinstance(item, GenerationChunk)
                if item.finish is not None:
                    usages[index] = item.usage or Usage()
                    first_reason = item.finish if index == 0 else first_reason
                    item = dataclasses.replace(item, finish=None, choice_finish=item.finish)  # usage: its own
                yield dataclasses.replace(item, choice=index)
            yield GenerationChunk(finish=first_reason, usage=_summed(usages))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self, index: int, request: PreparedRequest, queue: asyncio.Queue, prefilled: asyncio.Event | None
    ) -> None:
        try:
            async for chunk in self._engine.generate(request):
                if prefilled is not None:
                    prefilled.set()
                queue.put_nowait((index, chunk))
        except MuseError as e:
            queue.put_nowait((index, e))
        finally:
            if prefilled is not None:
                prefilled.set()
            queue.put_nowait((index, _DONE))


def _answer(request: PreparedRequest, i: int) -> PreparedRequest:
    sampling = request.sampling
    return dataclasses.replace(
        request,
        request_id=f"{request.request_id}#{i}",
        sampling=dataclasses.replace(
            sampling,
            n=1,
            seed=None if sampling.seed is None else sampling.seed + i,
            prompt_logprobs=sampling.prompt_logprobs if i == 0 else None,  # the same for every answer
        ),
    )


def _summed(usages: dict[int, Usage]) -> Usage:
    first = usages.get(0, Usage())
    generated = sum((u for u in usages.values()), Usage())
    return Usage(first.prompt_tokens, first.cached_tokens, generated.reasoning_tokens, generated.output_tokens)
