"""Per-request changes to the logits before sampling.

A processor sees one request's prompt and output so far and its next-token logits; the
engine applies a request's processors in order, then samples. Penalties live here;
grammar constraints and other per-request rules plug in through the same interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from museserve.messages import PreparedRequest


class LogitsProcessor(Protocol):
    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: Tensor) -> Tensor:
        """logits [vocab] float32 -> processed logits (may be modified in place)."""
        ...


@dataclass(frozen=True, slots=True)
class Penalties:
    """OpenAI presence/frequency penalties on output tokens; the multiplicative repetition
    penalty (divide positive logits, multiply negative ones) on prompt and output tokens."""

    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: Tensor) -> Tensor:
        if self.repetition != 1.0:
            seen = torch.tensor(sorted({*prompt_ids, *output_ids}), dtype=torch.long, device=logits.device)
            values = logits[seen]
            logits[seen] = torch.where(values > 0, values / self.repetition, values * self.repetition)
        if output_ids and (self.presence or self.frequency):
            out = torch.tensor(output_ids, dtype=torch.long, device=logits.device)
            counts = torch.bincount(out, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
            logits -= self.frequency * counts + self.presence * (counts > 0).to(logits.dtype)
        return logits


@dataclass(frozen=True, slots=True)
class MinTokens:
    """No end token (the model's own or the request's stop_token_ids) before `min_tokens`
    generated tokens (vLLM's semantics: stop strings still apply)."""

    end_ids: tuple[int, ...]
    min_tokens: int

    def __call__(self, prompt_ids: Sequence[int], output_ids: Sequence[int], logits: Tensor) -> Tensor:
        if len(output_ids) < self.min_tokens:
            logits[list(self.end_ids)] = -torch.inf
        return logits


def processors_for(
    request: PreparedRequest, constraint: LogitsProcessor | None = None, end_ids: tuple[int, ...] = ()
) -> tuple[LogitsProcessor, ...]:
    """Penalties, then min_tokens' ban on `end_ids` (the format's stop ids); a grammar `constraint`
    last, so nothing after it can lift its mask."""
    s = request.sampling
    penalties = Penalties(s.presence_penalty, s.frequency_penalty, s.repetition_penalty)
    chain: tuple[LogitsProcessor, ...] = () if penalties == Penalties() else (penalties,)
    banned = tuple(sorted({*end_ids, *s.stop_token_ids}))
    if s.min_tokens and banned:
        chain = (*chain, MinTokens(banned, s.min_tokens))
    return chain if constraint is None else (*chain, constraint)
