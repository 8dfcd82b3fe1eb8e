from __future__ import annotations

from collections import Counter

import pytest
import torch

from museserve.runner.sampler import make_generator, sample_batch


def sample_next_token(
    logits: torch.Tensor, *, temperature: float, top_p: float, top_k: int, generator: torch.Generator
) -> int:
    """One row of `sample_batch`: logits [V] -> token id."""
    return sample_batch(
        logits[None, :], temperatures=[temperature], top_ps=[top_p], top_ks=[top_k], generators=[generator]
    )[0]


# Probabilities 0.5, 0.3, 0.1, 0.05, 0.03, 0.02 over a 6-token vocabulary.
PROBS = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.03, 0.02])
LOGITS = PROBS.log()


def draw(logits: torch.Tensor, n: int, seed: int = 0, **params: float) -> list[int]:
    generator = make_generator(seed)
    settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, **params}
    return [sample_next_token(logits, generator=generator, **settings) for _ in range(n)]


def test_greedy_is_argmax_and_uses_no_randomness() -> None:
    logits = torch.tensor([0.1, 2.0, -1.0, 1.9])
    generator = make_generator(3)
    state = generator.get_state()
    for _ in range(5):
        assert sample_next_token(logits, temperature=0.0, top_p=0.5, top_k=2, generator=generator) == 1
    assert torch.equal(generator.get_state(), state)


def test_unfiltered_sampling_follows_softmax() -> None:
    counts = Counter(draw(LOGITS, 4000))
    for token, p in enumerate(PROBS.tolist()):
        assert abs(counts[token] / 4000 - p) < 0.03, (token, counts)


def test_top_k_limits_support() -> None:
    tokens = set(draw(LOGITS, 600, top_k=2))
    assert tokens == {0, 1}


def test_top_p_limits_support() -> None:
    # Mass before token 1 is 0.5 < 0.75 (kept); before token 2 it is 0.8 (dropped).
    tokens = set(draw(LOGITS, 600, top_p=0.75))
    assert tokens == {0, 1}
    assert set(draw(LOGITS, 100, top_p=0.4)) == {0}


def test_same_seed_same_tokens() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert draw(logits, 50, seed=7) == draw(logits, 50, seed=7)
    assert draw(logits, 50, seed=7) != draw(logits, 50, seed=8)
    assert make_generator(None).initial_seed() != make_generator(None).initial_seed()


def test_temperature_sharpens_and_flattens() -> None:
    argmax_share = {t: Counter(draw(LOGITS, 1000, temperature=t))[0] / 1000 for t in (0.1, 1.0, 3.0)}
    assert argmax_share[0.1] > 0.98  # p ** 10, renormalised: 0.994
    assert argmax_share[0.1] > argmax_share[1.0] > argmax_share[3.0]


def test_batch_rows_use_their_own_parameters() -> None:
    logits = torch.stack([LOGITS, LOGITS.flip(0), LOGITS])
    generators = [make_generator(s) for s in (1, 2, 3)]
    for _ in range(50):
        tokens = sample_batch(
            logits,
            temperatures=[0.0, 1.0, 1.0],
            top_ps=[1.0, 1.0, 0.75],
            top_ks=[0, 1, 0],
            generators=generators,
        )
        assert tokens[0] == 0 and tokens[1] == 5 and tokens[2] in (0, 1)
    single = draw(LOGITS, 20, seed=3, top_p=0.75)
    generator = make_generator(3)
    batched = [
        sample_batch(LOGITS[None], temperatures=[1.0], top_ps=[0.75], top_ks=[0], generators=[generator])[0]
        for _ in range(20)
    ]
    assert batched == single


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": -1.0, "top_p": 1.0, "top_k": 0}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0, "top_k": 0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5, "top_k": 0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.0, "top_k": -1}, "top_k"),
    ],
)
def test_invalid_parameters_name_the_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sample_next_token(LOGITS, generator=make_generator(0), **params)  # type: ignore[arg-type]
