"""Multi-turn conversations, planned in advance from a seeded RNG: everything but the answers.

The same workload, start times and seed give the same conversations: tenants, system
prompts, user turns, answer lengths, modes and think times. Turn k's request is its history:
the tenant entry's system prompt, turns 0 .. k-1 each followed by its answer as received,
then user turn k. So turn k's messages are turn k-1's plus that turn's answer and one user
turn, and a replica that served turn k-1 holds all but the tail of turn k in its prefix cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .plan import VOCABULARY, ChatMessage, RequestSpec
from .workload import Conversation, ModeMix, Workload

# The server refuses a blank message: an answer that came back blank stands in the history
# as this, so the history still alternates user and assistant.
BLANK_ANSWER = "(no answer)"


@dataclass(frozen=True)
class ConversationPlan:
    conversation: int
    start_s: float  # when turn 0 is due, from the run's start
    tenant: str
    api_key: str | None
    user: str
    model: str
    temperature: float | None
    system_prompt: str
    user_turns: tuple[str, ...]
    max_output_tokens: tuple[int, ...]  # one per turn
    modes: tuple[ModeMix, ...]  # one per turn
    think_times_s: tuple[float, ...]  # [k]: the pause after turn k's answer before turn k + 1 is due

    @property
    def turns(self) -> int:
        return len(self.user_turns)


def _section(workload: Workload) -> Conversation:
    if workload.conversation is None:
        raise ValueError(f"workload {workload.name!r} has no conversation section")
    return workload.conversation


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(VOCABULARY[i] for i in rng.integers(0, len(VOCABULARY), size=n))


def _probabilities(weights: Sequence[float]) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return p / p.sum()


def system_prompts(workload: Workload, seed: int = 0, salt: str = "") -> tuple[str, ...]:
    """One per tenant entry, in order. Distinct even when entries share a key: each names its
    entry. `salt` heads every prompt, so a run can keep another run's prompts out of its cache."""
    spec = _section(workload)
    rng = np.random.default_rng((seed, 0))
    sizes = spec.system_prompt_words.sample(rng, len(workload.tenants))
    return tuple(
        f"{salt}You are the assistant of {tenant.name} (tenant {i}). {_words(rng, int(size))}"
        for i, (tenant, size) in enumerate(zip(workload.tenants, sizes, strict=True))
    )


def plan_conversations(
    workload: Workload, starts: Sequence[float], keys: Mapping[str, str | None], seed: int = 0, salt: str = ""
) -> list[ConversationPlan]:
    """One conversation per start time; `keys` maps tenant names to API keys."""
    spec = _section(workload)
    prompts = system_prompts(workload, seed, salt)
    rng = np.random.default_rng((seed, 1))
    tenant_p = _probabilities([t.weight for t in workload.tenants])
    mode_p = _probabilities([m.weight for m in workload.modes])
    plans = []
    for c, start in enumerate(starts):
        # Drawn one conversation at a time: the first n do not depend on how many follow.
        t = int(rng.choice(len(tenant_p), p=tenant_p))
        turns = int(spec.turns.sample(rng, 1)[0])
        user_words = spec.user_words.sample(rng, turns)
        outputs = workload.output_tokens.sample(rng, turns)
        modes = rng.choice(len(mode_p), size=turns, p=mode_p)
        think_times = spec.think_time_s.sample(rng, turns - 1)
        # The conversation's own nonce at the head of each user turn: conversations of one
        # tenant share the system prompt and nothing after it.
        user_turns = tuple(f"conversation {c} turn {k}: {_words(rng, int(n))}" for k, n in enumerate(user_words))
        tenant = workload.tenants[t]
        plans.append(
            ConversationPlan(
                conversation=c,
                start_s=float(start),
                tenant=tenant.name,
                api_key=keys.get(tenant.name),
                user=tenant.user,
                model=workload.model,
                temperature=workload.temperature,
                system_prompt=prompts[t],
                user_turns=user_turns,
                max_output_tokens=tuple(int(n) for n in outputs),
                modes=tuple(workload.modes[int(m)] for m in modes),
                think_times_s=tuple(float(s) for s in think_times),
            )
        )
    return plans


def turn_messages(plan: ConversationPlan, turn: int, answers: Sequence[str]) -> tuple[ChatMessage, ...]:
    """The history sent as `turn` (0-based); `answers[k]` is turn k's answer text, k < turn."""
    if not 0 <= turn < plan.turns:
        raise IndexError(f"turn {turn} of a {plan.turns}-turn conversation")
    if len(answers) < turn:
        raise ValueError(f"turn {turn} needs the answers to the {turn} turns before it, got {len(answers)}")
    messages = [ChatMessage("system", plan.system_prompt)]
    for k in range(turn):
        answer = answers[k] if answers[k].strip() else BLANK_ANSWER
        messages += [ChatMessage("user", plan.user_turns[k]), ChatMessage("assistant", answer)]
    messages.append(ChatMessage("user", plan.user_turns[turn]))
    return tuple(messages)


def turn_request(plan: ConversationPlan, turn: int, answers: Sequence[str], index: int) -> RequestSpec:
    messages = turn_messages(plan, turn, answers)
    mode = plan.modes[turn]
    return RequestSpec(
        index=index,
        prompt="",
        max_output_tokens=plan.max_output_tokens[turn],
        mode=mode.mode,
        thinking_budget=mode.thinking_budget,
        num_agents=mode.agents,
        model=plan.model,
        temperature=plan.temperature,
        tenant=plan.tenant,
        api_key=plan.api_key,
        user=plan.user,
        prompt_words=sum(len(m.text.split()) for m in messages),
        messages=messages,
    )
