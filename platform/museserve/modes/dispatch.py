"""Which runner a prepared request goes to in a model replica: Contemplating's passes, n
answers to one prompt, or the engine itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

from museserve.config import ContemplatingConfig
from museserve.domain import Mode
from museserve.messages import GenerationChunk, PreparedRequest
from museserve.modes.contemplating import Contemplation
from museserve.modes.parallel_choices import Engine, ParallelChoices
from museserve.preprocess.tokenizer import Tokenizer


class ReplicaModes:
    def __init__(self, engine: Engine, tokenizer: Tokenizer, contemplating: ContemplatingConfig):
        self.engine = engine
        self.contemplation = Contemplation(engine, tokenizer, contemplating)
        self.choices = ParallelChoices(engine)

    def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        if request.mode is Mode.CONTEMPLATING:
            return self.contemplation.generate(request)
        if request.sampling.n > 1:
            return self.choices.generate(request)
        return self.engine.generate(request)
