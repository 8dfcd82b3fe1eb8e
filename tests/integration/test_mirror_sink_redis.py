"""The Redis mirror sink against a real redis-server: XADD, approximate trimming, reading
back in pages, and an outage that loses records without raising."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from museserve.gateway.mirror_records import MirrorRecord, MirrorSide
from museserve.gateway.mirror_sinks import RedisMirrorSink, read_records
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

STREAM = "museserve:mirror"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def record(i: int, content: str = "outputs") -> MirrorRecord:
    primary = MirrorSide.from_answer("muse-small", f"answer {i}", latency_s=0.2, output_tokens=2)
    candidate = MirrorSide.from_answer("muse-next", f"answer {i}!", latency_s=0.3, output_tokens=3)
    return MirrorRecord(f"r{i}", "acme", 1700000000.0 + i, "0" * 64, None, primary, candidate, content)  # type: ignore[arg-type]


def xlen(server: RedisServer, key: str = STREAM) -> int:
    reply = server.command("XLEN", key)
    assert reply.startswith(b":"), reply
    return int(reply[1:].strip())


async def test_records_land_in_the_stream_and_read_back(server: RedisServer) -> None:
    sink = RedisMirrorSink(server.url, STREAM, maxlen=1000, timeout_s=2.0)
    records = [record(i) for i in range(5)]
    for r in records:
        await sink.write(r)
    await sink.close()
    assert (sink.written, sink.failed) == (5, 0)
    assert xlen(server) == 5
    assert b"record" in server.command("XRANGE", STREAM, "-", "+", "COUNT", "1")
    assert read_records(server.url) == records
    assert read_records(server.url, limit=2) == records[:2]
    assert read_records(server.url, stream="other:mirror") == []


async def test_maxlen_trims_approximately_and_reader_pages(server: RedisServer) -> None:
    sink = RedisMirrorSink(server.url, "ms:mirror", maxlen=1000, timeout_s=2.0)
    for i in range(3000):
        await sink.write(record(i, "digest"))
    await sink.close()
    length = xlen(server, "ms:mirror")
    assert 1000 <= length < 1200  # `~` trims whole stream nodes (100 entries each by default)
    read = read_records(server.url, stream="ms:mirror")  # more than one XRANGE page
    assert len(read) == length
    assert read[-1].request_id == "r2999"
    assert [r.created_unix_s for r in read] == sorted(r.created_unix_s for r in read)
    assert len(read_records(server.url, limit=1500, stream="ms:mirror")) == min(1500, length)


async def test_outage_counts_failures_and_recovers(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    sink = RedisMirrorSink(client, STREAM, maxlen=100, timeout_s=0.5)
    await sink.write(record(0))
    server.stop()
    await sink.write(record(1))
    await sink.write(record(2))
    assert (sink.written, sink.failed) == (1, 2)
    server.start()
    await sink.write(record(3))
    assert (sink.written, sink.failed) == (2, 2)
    assert [r.request_id for r in read_records(server.url)] == ["r3"]  # a restart comes back empty
    await sink.close()
    assert await client.ping()  # a client passed in stays open: the caller owns it
    await client.aclose()


async def test_sink_that_never_reached_redis_does_not_raise(server: RedisServer) -> None:
    server.stop()
    sink = RedisMirrorSink(server.url, STREAM, maxlen=100, timeout_s=0.2)
    for i in range(3):
        await sink.write(record(i))
    assert (sink.written, sink.failed) == (0, 3)
    await sink.close()
