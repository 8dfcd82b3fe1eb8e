"""Verification of proposed tokens on given logits, no model: greedy keeps the longest matching
prefix plus the target's own token, and equals sampling the rows one at a time with the
processors seeing the kept tokens; rejection sampling leaves each position distributed as the
target's filtered distribution, for one-hot (n-gram) and drawn (draft model) proposals.

The distribution tests use fixed seeds, so they are deterministic; each compares counts with a
chi-square test at a significance of 1e-3: a correct sampler fails it for one seed set in a
thousand, and these seed sets pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from museserve.engine.plan import RowSampling
from museserve.runner.request_sampler import RequestSampler
from museserve.runner.sampler import filtered_probs, make_generator
from museserve.runner.sampling import sample_rows
from museserve.runner.verify import verify_row
from tests.support import prepared_request

VOCAB = 6
SIGNIFICANCE = 1e-3


def sampler(**sampling) -> RequestSampler:
    return RequestSampler.for_request(prepared_request("v", (1, 2, 3), **sampling), None)


def row(s: RequestSampler, output: tuple[int, ...] = (), forced: int | None = None) -> RowSampling:
    tokens = [1, 2, 3, *output]
    return RowSampling("v", 0, s, tokens, 3, len(tokens), 0, forced)


def logits_with_argmax(*tokens: int) -> torch.Tensor:
    rows = torch.randn(len(tokens), VOCAB, generator=torch.Generator().manual_seed(len(tokens)))
    for i, token in enumerate(tokens):
        rows[i, token] = 10.0
    return rows


def test_greedy_keeps_the_matching_prefix_and_adds_the_targets_token() -> None:
    result = verify_row(row(sampler()), logits_with_argmax(4, 5, 1, 2), (4, 5, 0), None)
    assert result.tokens == [4, 5, 1] and result.num_proposed == 3 and len(result.accepted) == 2
    result = verify_row(row(sampler()), logits_with_argmax(4, 5, 1, 2), (4, 5, 1), None)
    assert result.tokens == [4, 5, 1, 2]  # all kept: the last row's token comes too
    result = verify_row(row(sampler()), logits_with_argmax(3, 5), (4,), None)
    assert result.tokens == [3] and not result.accepted


def test_a_forced_token_is_taken_whatever_was_proposed() -> None:
    result = verify_row(row(sampler(), forced=0), logits_with_argmax(4, 5), (4,), None)
    assert result.tokens == [0]


@pytest.mark.parametrize("seed", range(5))
def test_greedy_with_processors_equals_one_row_at_a_time(seed: int) -> None:
    """Penalties see the kept proposals before each row, as they see sampled tokens before each step."""
    fields = dict(presence_penalty=1.5, frequency_penalty=0.7, repetition_penalty=1.3)
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(seed))
    expected, output = [], []
    for j in range(5):  # the target one token at a time
        token = sample_rows([row(sampler(**fields), tuple(output))], logits[j : j + 1].clone())[0].token
        expected.append(token)
        output.append(token)
    drafts = tuple(expected[:2]) + ((expected[2] + 1) % VOCAB, 0)  # two right, then wrong
    result = verify_row(row(sampler(**fields)), logits[:5].clone(), drafts, None)
    assert result.tokens == expected[:3]


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's test of `counts` against `probs` over the tokens `probs` gives mass to."""
    support = probs > 0
    assert int(counts[~support].sum()) == 0, "a token outside the target's support was drawn"
    expected = probs[support] * counts.sum()
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2)))


TARGET = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -3.0])
FILTERS = [dict(temperature=1.0, top_p=1.0, top_k=0), dict(temperature=0.7, top_p=0.9, top_k=4)]


@pytest.mark.parametrize("filters", FILTERS, ids=["plain", "filtered"])
@pytest.mark.parametrize("proposal", [0, 2, 5], ids=["likely", "middling", "outside-support"])
def test_rejection_sampling_of_a_one_hot_proposal_keeps_the_target_distribution(filters: dict, proposal: int) -> None:
    counts = torch.zeros(VOCAB)
    for seed in range(4000):
        s = sampler(seed=seed, **filters)
        first = verify_row(row(s), torch.stack([TARGET, TARGET]), (proposal,), None).tokens[0]
        counts[first] += 1
    p = filtered_probs(TARGET[None], filters["temperature"], filters["top_p"], filters["top_k"])[0]
    assert chi_square_p_value(counts, p) > SIGNIFICANCE


@pytest.mark.parametrize("filters", FILTERS, ids=["plain", "filtered"])
def test_rejection_sampling_of_drawn_proposals_keeps_the_target_distribution(filters: dict) -> None:
    """Two positions: the first token, and the second once the first proposal was kept (the second
    row's target here does not depend on the first token), both as the target's own."""
    draft = torch.tensor([-1.0, 0.5, 2.0, 1.0, 0.0, 0.3])  # a draft that favours other tokens
    second_target = torch.tensor([0.1, -1.0, 0.4, 2.5, 0.0, 1.0])
    q = filtered_probs(draft[None].expand(2, VOCAB), filters["temperature"], filters["top_p"], filters["top_k"])
    firsts, seconds = torch.zeros(VOCAB), torch.zeros(VOCAB)
    proposer = torch.Generator().manual_seed(99)
    for seed in range(4000):
        s = sampler(seed=seed, **filters)
        drafts = tuple(int(torch.multinomial(q[i], 1, generator=proposer)) for i in range(2))
        logits = torch.stack([TARGET, second_target, TARGET])
        tokens = verify_row(row(s), logits, drafts, q).tokens
        firsts[tokens[0]] += 1
        if len(tokens) > 1:  # the first proposal was kept: the second row was verified
            seconds[tokens[1]] += 1
    p = filtered_probs(torch.stack([TARGET, second_target]), filters["temperature"], filters["top_p"], filters["top_k"])
    assert chi_square_p_value(firsts, p[0]) > SIGNIFICANCE
    assert seconds.sum() > 500
    assert chi_square_p_value(seconds, p[1]) > SIGNIFICANCE


def test_the_same_seed_verifies_the_same_way() -> None:
    logits = torch.stack([TARGET, TARGET, TARGET])
    runs = [verify_row(row(sampler(seed=5, temperature=1.0)), logits.clone(), (1, 1), None).tokens for _ in range(2)]
    assert runs[0] == runs[1]


def test_log_probabilities_are_the_models_own_for_every_kept_token() -> None:
    logits = logits_with_argmax(4, 5, 1)
    s = sampler(logprobs=True, top_logprobs=2, presence_penalty=0.5)
    result = verify_row(row(s), logits.clone(), (4, 5), None)
    raw = logits.log_softmax(dim=-1)
    for j, token in enumerate([*result.accepted, dataclasses.replace(result, accepted=())]):
        assert token.logprob == pytest.approx(float(raw[j, token.token]))
        assert [t for t, _ in token.top] == raw[j].topk(2).indices.tolist()


def test_a_generator_is_only_drawn_from_when_sampling() -> None:
    s = sampler()  # greedy
    before = s.generator.get_state()
    verify_row(row(s), logits_with_argmax(4, 5), (4,), None)
    assert torch.equal(s.generator.get_state(), before)
    assert make_generator(1).initial_seed() == 1
