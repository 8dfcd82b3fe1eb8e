"""Prompts of the Contemplating mode, built from a prepared Thinking-style prompt.

The preprocess tier renders the conversation as usual, ending in the generation prompt
`<|assistant|> <|think|> [<|/think|>]`. Each agent's prompt is the conversation, then a
system turn with the agent's angle, then that generation prompt; the synthesis prompt is
the conversation, a system turn holding the agents' answers, then a generation prompt.
Everything before the angle is the same for every agent and for the synthesis, so the
prefix cache computes it once.
"""

from __future__ import annotations

from museserve.config import PoolConfig
from museserve.errors import InvalidArgument
from museserve.preprocess.tokenizer import MuseTokenizer

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
ANGLE_TURN_TOKENS_MAX = 64  # bound used before tokenizing: an angle turn is shorter than this
ANSWER_FRAMING_TOKENS = 16  # per agent answer in the synthesis turn: its "[i]" header and blank lines


def split_generation_prompt(prompt: tuple[int, ...], tokenizer: MuseTokenizer) -> tuple[tuple[int, ...], bool]:
    """(conversation, reasoning_open): the prompt without its trailing generation prompt."""
    if prompt[-1:] == (tokenizer.think_end_id,):
        end, reasoning_open = len(prompt) - 3, False
    else:
        end, reasoning_open = len(prompt) - 2, True
    if prompt[end : end + 2] != (tokenizer.assistant_id, tokenizer.think_id):
        raise ValueError("the prompt does not end in a generation prompt")
    return prompt[:end], reasoning_open


def generation_prompt(tokenizer: MuseTokenizer, reasoning_open: bool) -> list[int]:
    ids = [tokenizer.assistant_id, tokenizer.think_id]
    return ids if reasoning_open else [*ids, tokenizer.think_end_id]


def system_turn(tokenizer: MuseTokenizer, text: str) -> list[int]:
    return [tokenizer.system_id, *tokenizer.encode_text(text), tokenizer.end_id]


def agent_prompt(
    conversation: tuple[int, ...], index: int, num_agents: int, tokenizer: MuseTokenizer, reasoning_open: bool
) -> tuple[int, ...]:
    angle = f"You are attempt {index + 1} of {num_agents}. {ANGLES[index % len(ANGLES)]}"
    return (*conversation, *system_turn(tokenizer, angle), *generation_prompt(tokenizer, reasoning_open))


def synthesis_prompt(
    conversation: tuple[int, ...],
    answers: list[str],
    tokenizer: MuseTokenizer,
    reasoning_open: bool,
    answer_tokens: int,
) -> tuple[int, ...]:
    """Each answer is cut to `answer_tokens` tokens, so the prompt stays within
    `synthesis_prompt_bound` whatever the agents wrote."""
    ids = [tokenizer.system_id, *tokenizer.encode_text(SYNTHESIS_INSTRUCTION)]
    for i, answer in enumerate(answers):
        ids += tokenizer.encode_text(f"\n\n[{i + 1}]\n")
        ids += tokenizer.encode_text(answer.strip())[:answer_tokens]
    ids.append(tokenizer.end_id)
    return (*conversation, *ids, *generation_prompt(tokenizer, reasoning_open))


def synthesis_prompt_bound(conversation_tokens: int, num_agents: int, agent_answer_tokens: int) -> int:
    """An upper bound on the synthesis prompt's length, known before any agent runs."""
    instruction = 2 * ANGLE_TURN_TOKENS_MAX  # the instruction encodes to fewer tokens than its bytes / 2
    return conversation_tokens + instruction + num_agents * (agent_answer_tokens + ANSWER_FRAMING_TOKENS) + 4


def check_contemplating_fits(
    prompt_tokens: int, num_agents: int, budget: int, max_output: int, pool: PoolConfig
) -> None:
    """Every agent's pass and the synthesis pass must fit the context window; this is known
    before any of them runs (agent answers are capped, see `synthesis_prompt`)."""
    config, context = pool.contemplating, pool.engine.context_length
    reasoning = budget + 1 if budget else 0
    agent = prompt_tokens + ANGLE_TURN_TOKENS_MAX + reasoning + min(max_output, config.agent_answer_tokens)
    synthesis_budget = min(budget, config.synthesis_thinking_budget)
    synthesis = (
        synthesis_prompt_bound(prompt_tokens, num_agents, config.agent_answer_tokens)
        + (synthesis_budget + 1 if synthesis_budget else 0)
        + max_output
    )
    if max(agent, synthesis) > context:
        raise InvalidArgument(
            f"contemplating with {num_agents} agents needs up to {max(agent, synthesis)} positions "
            f"(prompt, agents' answers, synthesis); model {pool.name} has {context}",
            field="mode.num_agents",
        )
