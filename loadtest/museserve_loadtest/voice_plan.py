"""Voice sessions, planned in advance from a seeded RNG: everything but the server's answers.

The same workload, start times, seed and corpus size give the same sessions: tenants, modes,
answer bounds, system prompts, and per turn the utterance (its length and audio seed, or its
corpus clip) and the think time after its answer. The audio itself is made when its turn
starts (voice_audio.UtteranceSource): a run's speech would not fit in memory ahead of time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .plan import VOCABULARY
from .voice_workload import VoiceSection
from .workload import ModeMix, Workload

AUDIO_SEEDS = 2**31  # audio seeds are drawn from [0, AUDIO_SEEDS)


@dataclass(frozen=True)
class VoiceTurnPlan:
    utterance_s: float  # synthetic speech: its length; a corpus clip: the most of it spoken
    audio_seed: int
    corpus_index: int | None  # which corpus clip, or None for synthetic speech
    think_time_s: float  # the pause after this turn's answer before the next turn speaks


@dataclass(frozen=True)
class VoiceSessionPlan:
    session: int
    start_s: float  # when turn 0 starts speaking, from the run's start
    tenant: str
    api_key: str | None
    user: str
    model: str
    temperature: float | None
    mode: ModeMix
    max_output_tokens: int  # per answer: the session's request bounds every turn alike
    system_prompt: str  # empty: none
    sample_rate: int
    chunk_ms: int
    realtime: bool
    server_vad_silence_ms: int | None
    turns: tuple[VoiceTurnPlan, ...]


def voice_spec(workload: Workload) -> VoiceSection:
    if workload.voice is None:
        raise ValueError(f"workload {workload.name!r} has no voice section")
    return workload.voice


def _probabilities(weights: Sequence[float]) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return p / p.sum()


def plan_sessions(
    workload: Workload, starts: Sequence[float], keys: Mapping[str, str | None], seed: int = 0,
    corpus_size: int = 0,
) -> list[VoiceSessionPlan]:  # fmt: skip
    """One session per start time; `keys` maps tenant names to API keys; `corpus_size`: the
    clips of `voice.corpus` (0: synthetic speech)."""
    spec = voice_spec(workload)
    if (spec.corpus is not None) != (corpus_size > 0):
        raise ValueError("corpus_size must be the number of voice.corpus clips, and 0 without a corpus")
    rng = np.random.default_rng((seed, 2))
    tenant_p = _probabilities([t.weight for t in workload.tenants])
    mode_p = _probabilities([m.weight for m in workload.modes])
    plans = []
    for s, start in enumerate(starts):
        # Drawn one session at a time: the first n do not depend on how many follow.
        tenant = workload.tenants[int(rng.choice(len(tenant_p), p=tenant_p))]
        mode = workload.modes[int(rng.choice(len(mode_p), p=mode_p))]
        n = int(spec.turns.sample(rng, 1)[0])
        seconds = spec.utterance_s.sample(rng, n)
        clips = rng.integers(0, corpus_size, size=n) if corpus_size else [None] * n
        thinks = spec.think_time_s.sample(rng, n)
        words = int(spec.system_prompt_words.sample(rng, 1)[0]) if spec.system_prompt_words else 0
        prompt = " ".join(VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=words))
        turns = tuple(
            VoiceTurnPlan(float(sec) if clip is None else spec.utterance_s.max, int(rng.integers(0, AUDIO_SEEDS)),
                          None if clip is None else int(clip), float(think))
            for sec, clip, think in zip(seconds, clips, thinks, strict=True)
        )  # fmt: skip
        plans.append(
            VoiceSessionPlan(
                session=s,
                start_s=float(start),
                tenant=tenant.name,
                api_key=keys.get(tenant.name),
                user=tenant.user,
                model=workload.model,
                temperature=workload.temperature,
                mode=mode,
                max_output_tokens=int(workload.output_tokens.sample(rng, 1)[0]),
                system_prompt=f"Answer the caller of voice session {s} briefly. {prompt}" if words else "",
                sample_rate=spec.sample_rate,
                chunk_ms=spec.chunk_ms,
                realtime=spec.realtime,
                server_vad_silence_ms=spec.server_vad_silence_ms,
                turns=turns,
            )
        )
    return plans
