"""The value types workload sections are built of: strict models, lengths drawn from a
distribution (`fixed`, `uniform`, `lognormal`), and ranges of seconds."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fixed(Strict):
    dist: Literal["fixed"] = "fixed"
    value: int = Field(ge=1)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


class Uniform(Strict):
    dist: Literal["uniform"]
    min: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.min, self.max + 1, size=n)


class LogNormal(Strict):
    """Lognormal with the given mean (of the distribution, not of its log) and log-sigma,
    clipped to [min, max]: long tails without unbounded requests."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0)
    sigma: float = Field(gt=0, le=3)
    min: int = Field(1, ge=1)
    max: int = Field(ge=1)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2
        return np.clip(np.rint(rng.lognormal(mu, self.sigma, size=n)), self.min, self.max).astype(np.int64)


Length = Annotated[Fixed | Uniform | LogNormal, Field(discriminator="dist")]


class SecondsRange(Strict):
    """Uniform in [min, max] seconds."""

    min: float = Field(ge=0, le=3600)
    max: float = Field(ge=0, le=3600)

    @model_validator(mode="after")
    def _ordered(self) -> SecondsRange:
        if self.max < self.min:
            raise ValueError("max must be >= min")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.min, self.max, size=n)
