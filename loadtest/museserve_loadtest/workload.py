"""Workload files: YAML validated by pydantic; every error names the offending key.

A workload says *what* requests look like (modes, modalities, prompt and output lengths,
shared prefixes, tenants, model); the command line says *how fast* they are sent. A workload
with a `conversation` section is multi-turn: the rate is then of conversations, and the
prompts are the growing histories of `conversation.user_words` turns (`prompt_words` unused).
Lengths are in words of a fixed vocabulary, roughly one token each for the Muse tokenizers.
Keys are never written in a workload: `tenants[].key_env` names an environment variable.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class WorkloadError(ValueError):
    """A bad workload file; `field` is the dotted path of the key at fault."""

    def __init__(self, source: str, field: str, message: str):
        super().__init__(f"{source}: {field}: {message}")
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fixed(_Strict):
    dist: Literal["fixed"] = "fixed"
    value: int = Field(ge=1)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.int64)


class Uniform(_Strict):
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


class LogNormal(_Strict):
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


class ModeMix(_Strict):
    mode: Literal["instant", "thinking", "contemplating"]
    weight: float = Field(1.0, gt=0)
    thinking_budget: int | None = Field(None, ge=0, description="reasoning tokens per agent; unset: model default")
    agents: int | None = Field(None, ge=2, le=8, description="contemplating: agents in parallel")

    @model_validator(mode="after")
    def _agents_only_contemplating(self) -> ModeMix:
        if self.agents is not None and self.mode != "contemplating":
            raise ValueError("agents applies only to mode contemplating")
        return self


class ModalityMix(_Strict):
    """text: prompt only; image: `count` PNGs of width x height; audio: a WAV of `seconds`."""

    kind: Literal["text", "image", "audio"]
    weight: float = Field(1.0, gt=0)
    width: int = Field(64, ge=8, le=4096)
    height: int = Field(64, ge=8, le=4096)
    count: int = Field(1, ge=1, le=8)
    seconds: float = Field(1.0, gt=0, le=600)
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)


class SharedPrefix(_Strict):
    """`fraction` of requests start with one of `count` prefixes of `words` words."""

    fraction: float = Field(ge=0, le=1)
    count: int = Field(1, ge=1, le=1024)
    words: int = Field(ge=1, le=200_000)


class SecondsRange(_Strict):
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


class Conversation(_Strict):
    """Multi-turn conversations. Each tenant entry gets its own system prompt of
    `system_prompt_words` words; a conversation has `turns` user turns of `user_words` words,
    each sent `think_time_s` after the previous answer has fully arrived, with the whole
    history (system prompt, earlier turns, the answers as received). Answers are `output_tokens`."""

    turns: Length = Uniform(dist="uniform", min=3, max=6)
    system_prompt_words: Length = Uniform(dist="uniform", min=1000, max=1800)
    user_words: Length = Uniform(dist="uniform", min=20, max=80)
    think_time_s: SecondsRange = SecondsRange(min=0.1, max=0.5)


class Tenant(_Strict):
    name: str = Field(min_length=1)
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="env var holding the API key")
    weight: float = Field(1.0, gt=0)
    user: str = "loadtest"


class Workload(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    model: str = ""  # empty: the deployment's default model
    temperature: float | None = Field(None, ge=0, le=2)
    modes: list[ModeMix] = Field(default_factory=lambda: [ModeMix(mode="instant")], min_length=1)
    modalities: list[ModalityMix] = Field(default_factory=lambda: [ModalityMix(kind="text")], min_length=1)
    prompt_words: Length = Fixed(value=32)
    output_tokens: Length = Fixed(value=32)
    shared_prefix: SharedPrefix | None = None
    tenants: list[Tenant] = Field(default_factory=lambda: [Tenant(name="default")], min_length=1)
    conversation: Conversation | None = None  # declared last: its check reads the fields above

    @field_validator("conversation")
    @classmethod
    def _conversation_is_text_only(cls, value: Conversation | None, info: ValidationInfo) -> Conversation | None:
        if value is None:
            return value
        if any(m.kind != "text" for m in info.data.get("modalities", [])):
            raise ValueError("a conversation workload is text only: modalities must all be text")
        if info.data.get("shared_prefix") is not None:
            raise ValueError("a conversation workload shares its tenants' system prompts: drop shared_prefix")
        names = [t.name for t in info.data.get("tenants", [])]
        if len(set(names)) != len(names):
            raise ValueError("each tenant entry has its own system prompt: tenant names must be distinct")
        return value

    def keys(self, environ: Mapping[str, str], default_key: str | None = None) -> dict[str, str | None]:
        """tenant name -> API key, read now (never at import). A named variable that is unset
        gives that tenant no key (a local `auth: none` server needs none) and a warning on
        stderr, so a staging run without its keys shows up at once as UNAUTHENTICATED."""
        keys: dict[str, str | None] = {}
        for tenant in self.tenants:
            if tenant.key_env is None:
                keys[tenant.name] = default_key
            elif environ.get(tenant.key_env):
                keys[tenant.name] = environ[tenant.key_env]
            else:
                print(f"note: {tenant.key_env} is not set: tenant {tenant.name} sends no API key", file=sys.stderr)
                keys[tenant.name] = default_key
        return keys


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("fixed", "uniform", "lognormal") or not out:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_workload(data: object, source: str = "workload") -> Workload:
    if not isinstance(data, dict):
        raise WorkloadError(source, "(top level)", "a workload is a mapping of keys")
    try:
        return Workload.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise WorkloadError(source, _loc(tuple(first["loc"])), first["msg"]) from None


SHIPPED_WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"


def resolve_workload(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped workload (`chat` -> loadtest/workloads/chat.yaml)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    shipped = SHIPPED_WORKLOADS / f"{path.name}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SHIPPED_WORKLOADS.glob("*.yaml")))
    raise WorkloadError(str(path), "(file)", f"no such file, and not a shipped workload ({names})")


def load_workload(path: str | Path) -> Workload:
    path = resolve_workload(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise WorkloadError(str(path), "(yaml)", str(e)) from None
    return parse_workload(data, source=str(path))
