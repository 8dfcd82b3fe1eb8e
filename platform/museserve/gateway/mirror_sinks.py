"""Where mirror records go (a JSONL file or a Redis stream) and how `museserve mirror report`
reads them back.

Sinks never raise to the caller: a mirror must not hurt the request it copies. They count
failures in `failed` and log a rate-limited warning that carries no user content.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import redis
import redis.asyncio as aioredis

from museserve.config import GatewayConfig
from museserve.gateway.mirror_records import DEFAULT_STREAM, MirrorRecord

logger = logging.getLogger(__name__)


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


def build_mirror_sink(gateway: GatewayConfig, client: aioredis.Redis | None) -> MirrorSink:
    """The stream "{key_prefix}:mirror" on `client` (the gateway's one Redis client, None when
    redis.url is unset), else the JSONL file mirror_log. The sink never closes `client`."""
    if client is None:
        return JsonlMirrorSink(gateway.mirror_log)
    r = gateway.redis
    return RedisMirrorSink(client, f"{r.key_prefix}:mirror", r.mirror_stream_maxlen, r.timeout_ms / 1000)


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
