"""Turns a workload into concrete requests, all drawn in advance from one seeded RNG.

The same workload, count and seed give the same requests, so two runs (or two targets)
see the same traffic; nothing is drawn while the run is under way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .media import MediaCache
from .workload import Workload

# A fixed vocabulary: prompts are words drawn from it, about one token each.
VOCABULARY = (
    "the a of to and in is it that for on with as was at by this be from or an are which but not have all "
    "river stone light model token cache graph cloud music paper engine signal garden window orbit market "
    "theory answer reason number letter forest bridge summer winter ocean planet method system value energy"
).split()


@dataclass(frozen=True)
class ChatMessage:
    """One text message of a multi-turn history."""

    role: Literal["system", "user", "assistant"]
    text: str


@dataclass(frozen=True)
class RequestSpec:
    """One request as the transports send it; media are encoded bytes. With `messages` the
    request is that history (text only) and `prompt` is not sent."""

    index: int
    prompt: str
    max_output_tokens: int
    mode: str = "instant"
    thinking_budget: int | None = None
    num_agents: int | None = None
    model: str = ""
    temperature: float | None = None
    images: tuple[bytes, ...] = ()  # PNG
    audio: tuple[bytes, ...] = ()  # WAV
    tenant: str = "default"
    api_key: str | None = None
    user: str = "loadtest"
    prompt_words: int = 0
    shared_prefix: int | None = None  # which shared prefix it starts with, if any
    messages: tuple[ChatMessage, ...] = ()


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=n))


def _pick(rng: np.random.Generator, weights: list[float], n: int) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def plan_requests(
    workload: Workload, n: int, keys: Mapping[str, str | None], seed: int = 0, media: MediaCache | None = None
) -> list[RequestSpec]:
    rng = np.random.default_rng(seed)
    media = media if media is not None else MediaCache()  # an empty cache is falsy
    modes = _pick(rng, [m.weight for m in workload.modes], n)
    kinds = _pick(rng, [m.weight for m in workload.modalities], n)
    tenants = _pick(rng, [t.weight for t in workload.tenants], n)
    prompt_words = workload.prompt_words.sample(rng, n)
    outputs = workload.output_tokens.sample(rng, n)
    sp = workload.shared_prefix
    prefixes = [_words(rng, sp.words) for _ in range(sp.count)] if sp else []
    uses_prefix = rng.random(n) < (sp.fraction if sp else 0.0)
    which_prefix = rng.integers(0, max(len(prefixes), 1), size=n)
    specs = []
    for i in range(n):
        mode, kind, tenant = workload.modes[modes[i]], workload.modalities[kinds[i]], workload.tenants[tenants[i]]
        # A per-request nonce first word after the prefix keeps otherwise equal prompts apart.
        body = f"request {i}: " + _words(rng, int(prompt_words[i]))
        prefix = int(which_prefix[i]) if uses_prefix[i] else None
        prompt = f"{prefixes[prefix]}\n{body}" if prefix is not None else body
        images = (
            tuple(media.png(kind.width, kind.height, seed=j) for j in range(kind.count)) if kind.kind == "image" else ()
        )
        audio = (media.wav(kind.seconds, kind.sample_rate),) if kind.kind == "audio" else ()
        specs.append(
            RequestSpec(
                index=i,
                prompt=prompt,
                max_output_tokens=int(outputs[i]),
                mode=mode.mode,
                thinking_budget=mode.thinking_budget,
                num_agents=mode.agents,
                model=workload.model,
                temperature=workload.temperature,
                images=images,
                audio=audio,
                tenant=tenant.name,
                api_key=keys.get(tenant.name),
                user=tenant.user,
                prompt_words=int(prompt_words[i]) + (sp.words if prefix is not None and sp else 0),
                shared_prefix=prefix,
            )
        )
    return specs
