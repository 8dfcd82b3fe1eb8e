"""Next-token sampling: temperature, top-k and top-p (nucleus) over float32 logits.

Randomness comes from one uniform draw per row from a CPU generator, mapped through the
filtered distribution's CDF, so a seed gives the same tokens whatever device holds the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator; `None` seeds it nondeterministically."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _check_params(temperature: float, top_p: float, top_k: int) -> None:
    if temperature < 0:
        raise ValueError(f"temperature: must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k: must be >= 0, got {top_k}")


def sample_batch(
    logits: Tensor,
    *,
    temperatures: Sequence[float],
    top_ps: Sequence[float],
    top_ks: Sequence[int],
    generators: Sequence[torch.Generator],
) -> list[int]:
    """logits [B, V] (float32) with per-row parameters and generators -> B token ids."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, V], got {tuple(logits.shape)}")
    batch, vocab = logits.shape
    if not len(temperatures) == len(top_ps) == len(top_ks) == len(generators) == batch:
        raise ValueError(f"need {batch} temperatures, top_ps, top_ks and generators")
    for temperature, top_p, top_k in zip(temperatures, top_ps, top_ks, strict=True):
        _check_params(temperature, top_p, top_k)

    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    sampled_rows = [i for i, t in enumerate(temperatures) if t > 0]
    if sampled_rows:
        rows = torch.tensor(sampled_rows, device=logits.device)
        uniforms = torch.cat([torch.rand(1, generator=generators[i]) for i in sampled_rows])
        tokens[rows] = _sample_filtered(
            logits[rows],
            temperatures=torch.tensor([temperatures[i] for i in sampled_rows]),
            top_ps=torch.tensor([top_ps[i] for i in sampled_rows]),
            top_ks=torch.tensor([top_ks[i] or vocab for i in sampled_rows]),
            uniforms=uniforms,
        )
    return tokens.tolist()


def _sorted_filtered(logits: Tensor, temperatures: Tensor, top_ps: Tensor, top_ks: Tensor) -> tuple[Tensor, Tensor]:
    """The distributions sampling draws from, unnormalised, in descending order: probs [R, V]
    (zero past top-k and top-p) and the token id of each column, sorted_ids [R, V]."""
    device = logits.device
    temperatures, top_ps, top_ks = (t.to(device) for t in (temperatures, top_ps, top_ks))
    sorted_logits, sorted_ids = (logits / temperatures[:, None]).sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=device)[None, :]
    sorted_logits = sorted_logits.masked_fill(rank >= top_ks[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)  # [R, V], descending
    # Keep a token while the mass strictly before it is below top_p; the first always stays.
    mass_before = probs.cumsum(dim=-1) - probs
    return probs.masked_fill(mass_before >= top_ps[:, None], 0.0), sorted_ids


def filtered_probs(logits: Tensor, temperature: float, top_p: float, top_k: int) -> Tensor:
    """logits [R, V] -> [R, V]: the probabilities `sample_batch` draws each row from (temperature
    > 0), in token order, normalised."""
    _check_params(temperature, top_p, top_k)
    rows, vocab = logits.shape
    probs, sorted_ids = _sorted_filtered(
        logits.float(),
        torch.full((rows,), temperature),
        torch.full((rows,), top_p),
        torch.full((rows,), top_k or vocab),
    )
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter_(-1, sorted_ids, probs)


def _sample_filtered(
    logits: Tensor, *, temperatures: Tensor, top_ps: Tensor, top_ks: Tensor, uniforms: Tensor
) -> Tensor:
    """logits [R, V]; temperatures, top_ps, top_ks (1..V) and uniforms in [0, 1) are [R] each."""
    probs, sorted_ids = _sorted_filtered(logits, temperatures, top_ps, top_ks)
    uniforms = uniforms.to(logits.device)
    cdf = probs.cumsum(dim=-1)
    targets = uniforms[:, None] * cdf[:, -1:]
    picked = torch.searchsorted(cdf, targets, right=True).squeeze(-1)  # first index with cdf > target
    # Kept tokens form a prefix of positive probabilities; rounding must not step past it.
    last_kept = (probs > 0).sum(dim=-1) - 1
    picked = torch.minimum(picked, last_kept)
    return sorted_ids.gather(-1, picked[:, None]).squeeze(-1)


def draw(weights: Tensor, generator: torch.Generator) -> int:
    """A token drawn from unnormalised non-negative `weights` [V] with one uniform of `generator`."""
    cdf = weights.double().cumsum(dim=0)
    target = torch.rand(1, generator=generator, dtype=torch.float64).to(cdf.device) * cdf[-1]
    index = int(torch.searchsorted(cdf, target, right=True))  # the first entry whose cdf passes the draw
    return min(index, int(torch.nonzero(weights > 0)[-1]))  # rounding must not step past the support
