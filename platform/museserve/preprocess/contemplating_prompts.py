"""Prompts of the Contemplating mode, rendered in the pool's chat format.

Each agent's prompt is the conversation, then a system turn with the agent's angle, then the
generation prompt; the synthesis prompt is the conversation, then a system turn holding the
instruction and the agents' answers, then the generation prompt. Everything before the added
turn is the same for every pass, so the prefix cache computes it once. The preprocess tier
renders all of it (`contemplation_prompts`); the model replica only encodes the answers into
the synthesis turn (`synthesis_prompt`), so it needs no template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from museserve.config import PoolConfig
from museserve.config.context_window import ContextWindow
from museserve.domain import Message, Role, TextPart, ToolSpec
from museserve.errors import InvalidArgument
from museserve.messages import ContemplationPrompts
from museserve.preprocess.chat_format import ChatFormat, MediaTokens
from museserve.preprocess.tokenizer import Tokenizer

ANGLES = (
    "Work from first principles and check each step.",
    "Look for the edge cases and counterexamples first.",
    "Solve it a different way than the obvious one, then verify the result.",
    "Find the simplest correct path and keep the answer short.",
    "Restate what is really being asked before answering.",
    "Estimate first, then work it out exactly.",
    "Break the problem into parts and solve each.",
    "Argue both sides, then decide.",
)
SYNTHESIS_INSTRUCTION = (
    "Independent attempts at the request above follow. Take what is right from each, resolve their "
    "disagreements, and write one final answer."
)
ANSWER_FRAMING_TOKENS = 16  # per agent answer in the synthesis turn: its "[i]" header and blank lines


def angle(index: int, num_agents: int) -> str:
    return f"You are attempt {index + 1} of {num_agents}. {ANGLES[index % len(ANGLES)]}"


def contemplation_prompts(
    chat_format: ChatFormat,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    num_agents: int,
    *,
    agent_reasoning: bool,
    synthesis_thinking_budget: int,
    media_tokens: Callable[[], MediaTokens | None] = lambda: None,
) -> ContemplationPrompts:
    """`media_tokens` makes a fresh media hook per render (a hook walks the media once)."""
    agents = [
        chat_format.render(
            [*messages, _system(angle(i, num_agents))], tools, reasoning=agent_reasoning, media_tokens=media_tokens()
        )
        for i in range(num_agents)
    ]
    before, after = chat_format.render_split(
        [*messages, _system(SYNTHESIS_INSTRUCTION)],
        tools,
        reasoning=synthesis_thinking_budget > 0,
        media_tokens=media_tokens(),
    )
    shared = _common_prefix([*agents, before])
    n = len(shared)
    return ContemplationPrompts(
        shared=tuple(shared),
        agents=tuple(tuple(a[n:]) for a in agents),
        synthesis=(tuple(before[n:]), tuple(after)),
        synthesis_thinking_budget=synthesis_thinking_budget,
    )


def synthesis_prompt(
    prompts: ContemplationPrompts, answers: Sequence[str], tokenizer: Tokenizer, answer_tokens: int
) -> tuple[int, ...]:
    """Each answer is cut to `answer_tokens` tokens, so the prompt stays within
    `synthesis_prompt_bound` whatever the agents wrote."""
    ids = list(prompts.shared) + list(prompts.synthesis[0])
    for i, answer in enumerate(answers):
        ids += tokenizer.encode_text(f"\n\n[{i + 1}]\n")
        ids += tokenizer.encode_text(answer.strip())[:answer_tokens]
    return (*ids, *prompts.synthesis[1])


def synthesis_prompt_bound(prompts: ContemplationPrompts, num_agents: int, agent_answer_tokens: int) -> int:
    """An upper bound on the synthesis prompt's length, known before any agent runs."""
    frame = len(prompts.shared) + len(prompts.synthesis[0]) + len(prompts.synthesis[1])
    return frame + num_agents * (agent_answer_tokens + ANSWER_FRAMING_TOKENS)


def check_contemplating_fits(
    prompts: ContemplationPrompts, agent_budget: int, max_output: int, pool: PoolConfig, window: ContextWindow
) -> None:
    """Every agent's pass and the synthesis pass must fit the pool's context window; this is
    known before any of them runs (agent answers are capped, see `synthesis_prompt`)."""
    config, context = pool.contemplating, window.tokens
    longest_agent = len(prompts.shared) + max(len(a) for a in prompts.agents)
    agent = longest_agent + _reasoning_positions(agent_budget) + min(max_output, config.agent_answer_tokens)
    synthesis = (
        synthesis_prompt_bound(prompts, len(prompts.agents), config.agent_answer_tokens)
        + _reasoning_positions(prompts.synthesis_thinking_budget)
        + max_output
    )
    if max(agent, synthesis) > context:
        raise InvalidArgument(
            f"contemplating with {len(prompts.agents)} agents needs up to {max(agent, synthesis)} positions "
            f"(prompt, agents' answers, synthesis); the context window of model {pool.name} is {context} "
            f"tokens {window.limit}",
            field="mode.num_agents",
        )


def _reasoning_positions(budget: int) -> int:
    return budget + 1 if budget else 0


def _system(text: str) -> Message:
    return Message(Role.SYSTEM, (TextPart(text),))


def _common_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return list(first[:i])
    return list(first[:n])
