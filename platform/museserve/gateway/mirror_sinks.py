"""Where mirror records go (a JSONL file or Redis streams) and how `museserve mirror report`
reads them back.

With `redis.mirror_streams` N > 1 the records spread over N streams `<base>:{g<k>}`, a
record's chosen by hashing its request id; on a Redis Cluster each group's tag lands on its
own slot, so one hot stream cannot hold every shard back. N = 1 is the single stream
`<base>` (`{key_prefix}:mirror`). The reader reads the base stream and every group stream
there is, merged oldest first by entry id.

Sinks never raise to the caller: a mirror must not hurt the request it copies. They count
failures in `failed` and log a rate-limited warning that carries no user content.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import redis

from museserve.config import GatewayConfig
from museserve.gateway.mirror_records import DEFAULT_STREAM, MirrorRecord
from museserve.gateway.redis_client import AnyRedis, build_client, build_sync_client, group_of

MAX_STREAM_GROUPS = 64  # the bound of redis.mirror_streams: the reader looks for this many

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


def group_streams(base: str, groups: int) -> list[str]:
    """The stream keys of `groups` groups: `base` itself when there is one."""
    return [base] if groups == 1 else [f"{base}:{{g{k}}}" for k in range(groups)]


class RedisMirrorSink:
    """XADD to one of `groups` streams, each trimmed to about maxlen entries, each entry
    {"record": <json>}."""

    def __init__(self, client: str | AnyRedis, stream_key: str, maxlen: int, timeout_s: float, groups: int = 1):
        self._owned = isinstance(client, str)
        if isinstance(client, str):
            client = build_client(client, timeout_s=timeout_s)
        self.client: AnyRedis = client
        self.stream_key, self.maxlen, self.timeout_s = stream_key, maxlen, timeout_s
        self.streams = group_streams(stream_key, groups)
        self.failed = 0
        self.written = 0
        self._warn = _RateLimitedWarning(f"mirror stream {stream_key} unavailable")

    def stream_of(self, record: MirrorRecord) -> str:
        return self.streams[group_of(record.request_id, len(self.streams))]

    async def write(self, record: MirrorRecord) -> None:
        try:
            payload = json.dumps(record.to_json(), ensure_ascii=False)
            stream = self.stream_of(record)
            xadd = self.client.xadd(stream, {"record": payload}, maxlen=self.maxlen, approximate=True)
            await asyncio.wait_for(xadd, self.timeout_s)
            self.written += 1
        except Exception as e:  # a lost record must never fail the mirrored request
            self.failed += 1
            self._warn(self.failed, e)

    async def close(self) -> None:
        if self._owned:
            await self.client.aclose()


def build_mirror_sink(gateway: GatewayConfig, client: AnyRedis | None) -> MirrorSink:
    """The streams "{key_prefix}:mirror" (see `group_streams`) on `client` (the gateway's
    Redis client, None when redis.url is unset), else the JSONL file mirror_log. The sink
    never closes `client`."""
    if client is None:
        return JsonlMirrorSink(gateway.mirror_log)
    r = gateway.redis
    return RedisMirrorSink(
        client, f"{r.key_prefix}:mirror", r.mirror_stream_maxlen, r.timeout_ms / 1000, groups=r.mirror_streams
    )


class MirrorSourceError(Exception):
    """The records cannot be read: no such file, a malformed line, Redis unreachable."""


def read_records(source: str, limit: int | None = None, stream: str = DEFAULT_STREAM) -> list[MirrorRecord]:
    """Records from a JSONL path or a Redis URL (a cluster's too: redis+cluster://): the
    stream `stream` and its group streams, oldest first."""
    if source.startswith(("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")):
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


def _read_stream(url: str, stream: str, limit: int | None) -> list[MirrorRecord]:
    try:
        with build_sync_client(url, timeout_s=10) as client:
            # Group streams sit on different cluster slots, so one multi-key XREAD cannot
            # take them all: each is paged on its own, then merged.
            streams = [stream, *group_streams(stream, MAX_STREAM_GROUPS)]
            pages = [_read_one(client, key, limit) for key in streams if client.exists(key)]
    except redis.RedisError as e:
        raise MirrorSourceError(f"cannot read stream {stream} at {url}: {type(e).__name__}: {e}") from None
    # Entry ids are `<ms>-<seq>`: merging by them orders records as they were added.
    merged = heapq.merge(*pages, key=lambda entry: entry[0])
    records: list[MirrorRecord] = []
    for (_, where), fields in merged:
        if limit is not None and len(records) >= limit:
            break
        records.append(_parse(fields.get(b"record", b""), where))
    return records


def _read_one(client: redis.Redis, stream: str, limit: int | None, page: int = 1000) -> list:
    """((ms, seq), where), fields) of one stream's entries, oldest first, in pages of XRANGE."""
    entries: list = []
    start = "-"
    while limit is None or len(entries) < limit:
        count = page if limit is None else min(page, limit - len(entries))
        batch = client.xrange(stream, min=start, max="+", count=count)
        for entry_id, fields in batch:
            ms, _, seq = entry_id.decode().partition("-")
            entries.append((((int(ms), int(seq)), f"{stream} entry {entry_id.decode()}"), fields))
        if len(batch) < count:
            break
        start = "(" + batch[-1][0].decode()
    return entries


def _parse(line: str | bytes, where: str) -> MirrorRecord:
    try:
        return MirrorRecord.from_json(json.loads(line))
    except (ValueError, AttributeError) as e:
        raise MirrorSourceError(f"{where}: not a mirror record ({e})") from None
