"""Mirror records: JSON round trip, content policy, the JSONL sink and the reader."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from museserve.config import GatewayConfig
from museserve.gateway.mirror_records import MirrorRecord, MirrorSide, apply_content_policy, messages_digest
from museserve.gateway.mirror_sinks import (
    JsonlMirrorSink,
    MirrorSourceError,
    RedisMirrorSink,
    build_mirror_sink,
    read_records,
)

MESSAGES = [{"role": "user", "content": "What is 2+2?"}]


def make_record(request_id: str = "r1", candidate_text: str = "Four.") -> MirrorRecord:
    primary = MirrorSide.from_answer(
        "muse-small", "4", "add", latency_s=0.5, ttft_s=0.1, prompt_tokens=9, output_tokens=1, finish="stop"
    )
    candidate = MirrorSide.from_answer("muse-next", candidate_text, latency_s=0.7, output_tokens=2, finish="stop")
    return MirrorRecord(
        request_id, "acme", 1700000000.5, messages_digest(MESSAGES), MESSAGES, primary, candidate, "full"
    )


def test_digests_are_sha256_of_utf8_text() -> None:
    side = MirrorSide.from_answer("p", "héllo")
    assert side.output_digest == hashlib.sha256("héllo".encode()).hexdigest()
    assert MirrorSide.from_error("p", "UNAVAILABLE").output_digest == ""


def test_round_trip_through_json_text() -> None:
    record = make_record()
    data = json.loads(json.dumps(record.to_json()))
    assert data["v"] == 1
    assert set(data) == {"v", "request_id", "tenant", "created_unix_s", "input_digest", "input"} | {
        "primary",
        "candidate",
        "content",
    }
    assert MirrorRecord.from_json(data) == record


def test_from_json_refuses_other_versions_and_missing_fields() -> None:
    data = make_record().to_json()
    with pytest.raises(ValueError, match="v=2"):
        MirrorRecord.from_json({**data, "v": 2})
    del data["primary"]["finish"]
    with pytest.raises(ValueError, match="malformed"):
        MirrorRecord.from_json(data)


@pytest.mark.parametrize(
    ("content", "has_text", "has_input"), [("digest", False, False), ("outputs", True, False), ("full", True, True)]
)
def test_content_policy(content: str, has_text: bool, has_input: bool) -> None:
    record = make_record()
    kept = apply_content_policy(record, content)  # type: ignore[arg-type]
    assert kept.content == content
    assert (kept.input is not None) is has_input
    for side, original in ((kept.primary, record.primary), (kept.candidate, record.candidate)):
        assert (side.text is not None) is has_text
        assert (side.reasoning is not None) is has_text
        assert side.output_digest == original.output_digest
        assert side.output_tokens == original.output_tokens
    assert kept.input_digest == record.input_digest
    assert MirrorRecord.from_json(kept.to_json()) == kept


def test_content_policy_refuses_unknown_policy() -> None:
    with pytest.raises(ValueError, match="content must be"):
        apply_content_policy(make_record(), "everything")  # type: ignore[arg-type]


async def test_jsonl_sink_with_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "mirror.jsonl"
    sink = JsonlMirrorSink(path)
    long_text = "x" * 100_000  # larger than any stdio buffer: must still land as one line
    records = [make_record(f"r{i}", long_text if i % 10 == 0 else f"answer {i}") for i in range(200)]
    await asyncio.gather(*(sink.write(r) for r in records))
    await sink.close()
    assert (sink.written, sink.failed) == (200, 0)
    read = read_records(str(path))
    assert sorted(r.request_id for r in read) == sorted(r.request_id for r in records)
    assert {r.request_id: r for r in read} == {r.request_id: r for r in records}
    assert len(read_records(str(path), limit=7)) == 7


async def test_jsonl_sink_does_not_raise_when_unwritable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = JsonlMirrorSink(blocker / "mirror.jsonl")  # parent is a file
    with caplog.at_level(logging.WARNING, logger="museserve.gateway.mirror_records"):
        await sink.write(make_record())
        await sink.write(make_record())
    assert (sink.written, sink.failed) == (0, 2)
    assert len(caplog.records) == 1  # rate-limited
    assert "What is 2+2" not in caplog.text and "Four" not in caplog.text


def test_reader_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(make_record().to_json()) + "\n\n{not json\n")
    with pytest.raises(MirrorSourceError, match=r"m\.jsonl:3"):
        read_records(str(path))
    with pytest.raises(MirrorSourceError, match="no such file"):
        read_records(str(tmp_path / "absent.jsonl"))


async def test_build_mirror_sink_picks_redis_when_configured(tmp_path: Path) -> None:
    jsonl = build_mirror_sink(GatewayConfig(mirror_log=str(tmp_path / "m.jsonl")), None)
    assert isinstance(jsonl, JsonlMirrorSink) and jsonl.path == tmp_path / "m.jsonl"
    config = GatewayConfig.model_validate(
        {"redis": {"url": "redis://127.0.0.1:1/0", "key_prefix": "ms", "mirror_stream_maxlen": 500}}
    )
    client = aioredis.Redis.from_url("redis://127.0.0.1:1/0")  # connects on first command only
    sink = build_mirror_sink(config, client)
    assert isinstance(sink, RedisMirrorSink)
    assert (sink.stream_key, sink.maxlen, sink.timeout_s) == ("ms:mirror", 500, 0.05)
    assert sink.client is client
    await sink.close()
    await client.aclose()
