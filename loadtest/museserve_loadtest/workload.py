"""Workload files: YAML validated by pydantic; every error names the offending key.

A workload says *what* requests look like (modes, modalities, prompt and output lengths,
shared prefixes, tenants, model); the command line says *how fast* they are sent. A workload
with a `conversation` section is multi-turn: the rate is then of conversations, and the
prompts are the growing histories of `conversation.user_words` turns (`prompt_words` unused).
A workload with a `voice` section is of spoken sessions over Converse (see voice_workload.py):
the rate is then of sessions, and `prompt_words` is unused too.
Lengths are in words of a fixed vocabulary, roughly one token each for the Muse tokenizers.
Keys are never written in a workload: `tenants[].key_env` names an environment variable.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from .voice_workload import VOICE_MODES, VoiceSection
from .workload_fields import Fixed, Length, LogNormal, SecondsRange, Strict, Uniform

__all__ = [
    "Conversation", "Fixed", "Length", "LogNormal", "ModalityMix", "ModeMix", "SecondsRange", "SharedPrefix",
    "Tenant", "Uniform", "VoiceSection", "Workload", "WorkloadError", "load_workload", "parse_workload",
    "resolve_workload",
]  # fmt: skip


class WorkloadError(ValueError):
    """A bad workload file; `field` is the dotted path of the key at fault."""

    def __init__(self, source: str, field: str, message: str):
        super().__init__(f"{source}: {field}: {message}")
        self.field = field


class ModeMix(Strict):
    mode: Literal["instant", "thinking", "contemplating"]
    weight: float = Field(1.0, gt=0)
    thinking_budget: int | None = Field(None, ge=0, description="reasoning tokens per agent; unset: model default")
    agents: int | None = Field(None, ge=2, le=8, description="contemplating: agents in parallel")

    @model_validator(mode="after")
    def _agents_only_contemplating(self) -> ModeMix:
        if self.agents is not None and self.mode != "contemplating":
            raise ValueError("agents applies only to mode contemplating")
        return self


class ModalityMix(Strict):
    """text: prompt only; image: `count` PNGs of width x height; audio: a WAV of `seconds`."""

    kind: Literal["text", "image", "audio"]
    weight: float = Field(1.0, gt=0)
    width: int = Field(64, ge=8, le=4096)
    height: int = Field(64, ge=8, le=4096)
    count: int = Field(1, ge=1, le=8)
    seconds: float = Field(1.0, gt=0, le=600)
    sample_rate: int = Field(16_000, ge=8_000, le=48_000)


class SharedPrefix(Strict):
    """`fraction` of requests start with one of `count` prefixes of `words` words."""

    fraction: float = Field(ge=0, le=1)
    count: int = Field(1, ge=1, le=1024)
    words: int = Field(ge=1, le=200_000)


class Conversation(Strict):
    """Multi-turn conversations. Each tenant entry gets its own system prompt of
    `system_prompt_words` words; a conversation has `turns` user turns of `user_words` words,
    each sent `think_time_s` after the previous answer has fully arrived, with the whole
    history (system prompt, earlier turns, the answers as received). Answers are `output_tokens`."""

    turns: Length = Uniform(dist="uniform", min=3, max=6)
    system_prompt_words: Length = Uniform(dist="uniform", min=1000, max=1800)
    user_words: Length = Uniform(dist="uniform", min=20, max=80)
    think_time_s: SecondsRange = SecondsRange(min=0.1, max=0.5)


class Tenant(Strict):
    name: str = Field(min_length=1)
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="env var holding the API key")
    weight: float = Field(1.0, gt=0)
    user: str = "loadtest"


class Workload(Strict):
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
    conversation: Conversation | None = None  # declared after the fields its check reads
    voice: VoiceSection | None = None  # declared last: its check reads every field above

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

    @field_validator("voice")
    @classmethod
    def _voice_is_speech_only(cls, value: VoiceSection | None, info: ValidationInfo) -> VoiceSection | None:
        if value is None:
            return value
        if info.data.get("conversation") is not None:
            raise ValueError("a workload has a conversation section or a voice section, not both")
        if any(m.kind != "text" for m in info.data.get("modalities", [])):
            raise ValueError("a voice workload sends speech only: modalities must all be text")
        if info.data.get("shared_prefix") is not None:
            raise ValueError("a voice workload has no shared prefixes: drop shared_prefix")
        if bad := sorted({m.mode for m in info.data.get("modes", []) if m.mode not in VOICE_MODES}):
            raise ValueError(f"a voice session is {' or '.join(VOICE_MODES)}: modes has {', '.join(bad)}")
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
