"""Shadow-mirror records: one per mirrored request, the primary's and the candidate's answer
side by side; the sinks the gateway writes them to (a JSONL file or a Redis stream) and the
reader that `museserve mirror report` loads them with.

Sinks never raise to the caller: a mirror must not hurt the request it copies. They count
failures in `failed` and log a rate-limited warning that carries no user content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import redis
import redis.asyncio as aioredis

from museserve.config import GatewayConfig

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


class MirrorSink(Protocol):
    failed: int

    async def write(self, record: MirrorRecord) -> None: ...

    async def close(self) -> None: ...


class _RateLimitedWarning:
    def __init__(self, what: str, interval_s: float = 60.0):
        self._what, self._interval_s = what, interval_s
        self._last = -interval_s

    def __call__(self, failed: int, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last >= self._interval_s:
            self._last = now
            logger.warning("%s: %s (%d mirror records lost so far)", self._what, type(error).__name__, failed)


class JsonlMirrorSink:
    """Appends one JSON line per record."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.failed = 0
        self.written = 0
        self._lock = asyncio.Lock()
        self._warn = _RateLimitedWarning(f"mirror log {self.path} not writable")

    async def write(self, record: MirrorRecord) -> None:
        try:
            line = (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
            async with self._lock:
                await asyncio.to_thread(self._append, line)
            self.written += 1
        except Exception as e:  # a lost record must never fail the mirrored request
            self.failed += 1
            self._warn(self.failed, e)

    def _append(self, line: bytes) -> None:
        # One write(2) per record on an O_APPEND descriptor: lines from other processes
        # appending to the same file (several gateway replicas) land whole, never interleaved.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    async def close(self) -> None:
        async with self._lock:
            pass


class RedisMirrorSink:
    """XADD to a stream trimmed to about maxlen entries, each entry {"record": <json>}."""

    def __init__(self, client: str | aioredis.Redis, stream_key: str, maxlen: int, timeout_s: float):
        self._owned = isinstance(client, str)
        if isinstance(client, str):
            client = aioredis.Redis.from_url(client, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.client: aioredis.Redis = client
        self.stream_key, self.maxlen, self.timeout_s = stream_key, maxlen, timeout_s
        self.failed = 0
        self.written = 0
        self._warn = _RateLimitedWarning(f"mirror stream {stream_key} unavailable")

    async def write(self, record: MirrorRecord) -> None:
        try:
            payload = json.dumps(record.to_json(), ensure_ascii=False)
            xadd = self.client.xadd(self.stream_key, {"record": payload}, maxlen=self.maxlen, approximate=True)
            await asyncio.wait_for(xadd, self.timeout_s)
            self.written += 1
        except Exception as e:  # a lost record must never fail the mirrored request
            self.failed += 1
            self._warn(self.failed, e)

    async def close(self) -> None:
        if self._owned:
            await self.client.aclose()


def build_mirror_sink(gateway: GatewayConfig) -> MirrorSink:
    """Redis stream "{key_prefix}:mirror" when redis.url is set, else the JSONL file mirror_log."""
    r = gateway.redis
    if r.url is None:
        return JsonlMirrorSink(gateway.mirror_log)
    return RedisMirrorSink(r.url, f"{r.key_prefix}:mirror", r.mirror_stream_maxlen, r.timeout_ms / 1000)


class MirrorSourceError(Exception):
    """The records cannot be read: no such file, a malformed line, Redis unreachable."""


def read_records(source: str, limit: int | None = None, stream: str = DEFAULT_STREAM) -> list[MirrorRecord]:
    """Records from a JSONL path or a redis:// URL (the stream `stream`), oldest first."""
    if source.startswith(("redis://", "rediss://", "unix://")):
        return _read_stream(source, stream, limit)
    path = Path(source)
    if not path.is_file():
        raise MirrorSourceError(f"no such file: {source}")
    records: list[MirrorRecord] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(records) >= limit:
                break
            if line.strip():
                records.append(_parse(line, f"{source}:{number}"))
    return records


def _read_stream(url: str, stream: str, limit: int | None, page: int = 1000) -> list[MirrorRecord]:
    records: list[MirrorRecord] = []
    start = "-"
    try:
        with redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5) as client:
            while limit is None or len(records) < limit:
                count = page if limit is None else min(page, limit - len(records))
                entries = client.xrange(stream, min=start, max="+", count=count)
                for entry_id, fields in entries:
                    records.append(_parse(fields.get(b"record", b""), f"{stream} entry {entry_id.decode()}"))
                if len(entries) < count:
                    break
                start = "(" + entries[-1][0].decode()
    except redis.RedisError as e:
        raise MirrorSourceError(f"cannot read stream {stream} at {url}: {type(e).__name__}: {e}") from None
    return records


def _parse(line: str | bytes, where: str) -> MirrorRecord:
    try:
        return MirrorRecord.from_json(json.loads(line))
    except (ValueError, AttributeError) as e:
        raise MirrorSourceError(f"{where}: not a mirror record ({e})") from None
