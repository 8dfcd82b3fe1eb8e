"""Shadow-mirror records: one per mirrored request, the primary's and the candidate's answer
side by side, and the content policy that decides what a record keeps. `mirror_sinks`
writes and reads them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CONTENT_POLICIES = ("digest", "outputs", "full")
DEFAULT_STREAM = "museserve:mirror"
Content = Literal["digest", "outputs", "full"]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def messages_digest(messages: list[dict[str, Any]]) -> str:
    """Digest of the input messages in canonical JSON (sorted keys, no spaces)."""
    return sha256_hex(json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


@dataclass(frozen=True)
class MirrorSide:
    """One pool's answer. status is "OK" or a status code name (UNAVAILABLE, SKIPPED, ...)."""

    pool: str
    status: str
    latency_s: float | None
    ttft_s: float | None
    prompt_tokens: int
    output_tokens: int
    reasoning_tokens: int
    finish: str
    text: str | None
    reasoning: str | None
    output_digest: str  # sha256 of text; "" when the side produced no answer

    @property
    def answered(self) -> bool:
        return self.status == "OK"

    @classmethod
    def from_answer(
        cls,
        pool: str,
        text: str,
        reasoning: str = "",
        *,
        latency_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        output_tokens: int = 0,
        reasoning_tokens: int = 0,
        finish: str = "",
    ) -> MirrorSide:
        """An OK side with its digest; the content policy may drop text and reasoning later."""
        usage = (latency_s, ttft_s, prompt_tokens, output_tokens, reasoning_tokens, finish)
        return cls(pool, "OK", *usage, text, reasoning, sha256_hex(text))

    @classmethod
    def from_error(cls, pool: str, status: str, latency_s: float | None = None) -> MirrorSide:
        return cls(pool, status, latency_s, None, 0, 0, 0, "", None, None, "")


@dataclass(frozen=True)
class MirrorRecord:
    request_id: str
    tenant: str
    created_unix_s: float
    input_digest: str
    input: list[dict[str, Any]] | None  # only with content=full
    primary: MirrorSide
    candidate: MirrorSide
    content: Content

    def to_json(self) -> dict[str, Any]:
        return {"v": SCHEMA_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MirrorRecord:
        if data.get("v") != SCHEMA_VERSION:
            raise ValueError(f"mirror record schema v={data.get('v')!r}; this version reads v={SCHEMA_VERSION}")
        try:
            sides = {k: MirrorSide(**data[k]) for k in ("primary", "candidate")}
            fields = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name not in sides}
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed mirror record: {e}") from None
        if fields["content"] not in CONTENT_POLICIES:
            raise ValueError(f"mirror record content {fields['content']!r} is not one of {CONTENT_POLICIES}")
        return cls(**fields, **sides)


def apply_content_policy(record: MirrorRecord, content: Content) -> MirrorRecord:
    """digest keeps hashes and counts only; outputs adds both answers; full adds the input."""
    if content not in CONTENT_POLICIES:
        raise ValueError(f"content must be one of {CONTENT_POLICIES}, not {content!r}")
    primary, candidate = record.primary, record.candidate
    if content == "digest":
        primary = dataclasses.replace(primary, text=None, reasoning=None)
        candidate = dataclasses.replace(candidate, text=None, reasoning=None)
    keep_input = record.input if content == "full" else None
    return dataclasses.replace(record, primary=primary, candidate=candidate, input=keep_input, content=content)
