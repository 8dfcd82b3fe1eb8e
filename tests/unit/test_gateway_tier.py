"""The gateway's request path with its tier logic: quota charged and settled, shedding,
metadata, and mirroring that never touches the primary. Pools here are plain async
generators with scripted behaviour (slow, failing, hanging); the preprocess tier is real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from museserve.config import MuseServeConfig, parse_config
from museserve.domain import ChatRequest, FinishReason, Identity, Message, Role, TextPart, Usage
from museserve.errors import ResourceExhausted, Unavailable
from museserve.gateway.gateway import Gateway
from museserve.gateway.mirror import Mirror
from museserve.gateway.mirror_sinks import JsonlMirrorSink, read_records
from museserve.gateway.observer import CountingObserver
from museserve.gateway.quota import QuotaGuard
from museserve.gateway.ratelimit import LocalRateLimiter
from museserve.messages import GenerationChunk, PreparedRequest
from tests.support import text_preprocess


def make_config(**pool_extra: Any) -> MuseServeConfig:
    return parse_config(
        {
            "pools": [
                {"name": "main", "max_in_flight": 4, **pool_extra},
                {"name": "shadow"},
            ],
            "gateway": {
                "tiers": {
                    "default": {
                        "tenant": {
                            "requests_per_minute": 1,
                            "request_burst": 3,
                            "tokens_per_minute": 1,
                            "token_burst": 1000,
                        }
                    }
                },
            },
        }
    )


class ScriptedPool:
    """Streams `tokens` one-token chunks, `delay_s` apart; may fail midway or hang."""

    def __init__(self, tokens: int = 5, delay_s: float = 0.0, fail_after: int | None = None, hang: bool = False):
        self.tokens, self.delay_s, self.fail_after, self.hang = tokens, delay_s, fail_after, hang
        self.calls: list[PreparedRequest] = []
        self.cancelled = 0

    async def generate(self, request: PreparedRequest) -> AsyncIterator[GenerationChunk]:
        self.calls.append(request)
        try:
            if self.hang:
                await asyncio.Event().wait()
            for i in range(self.tokens):
                if self.fail_after is not None and i == self.fail_after:
                    raise Unavailable("replica died")
                await asyncio.sleep(self.delay_s)
                yield GenerationChunk(text=f"t{i} ", num_new_tokens=1)
            usage = Usage(prompt_tokens=request.num_prompt_tokens, output_tokens=self.tokens)
            yield GenerationChunk(finish=FinishReason.STOP, usage=usage)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def request(rid: str = "r1", tenant: str = "acme") -> ChatRequest:
    return ChatRequest(
        request_id=rid,
        messages=(Message(Role.USER, (TextPart("hello there"),)),),
        identity=Identity(tenant=tenant, user="bob"),
    )


def build(config: MuseServeConfig, main: ScriptedPool, shadow: ScriptedPool | None = None, sink=None):
    pools = {"main": main, "shadow": shadow or ScriptedPool()}
    observer = CountingObserver()
    quota = QuotaGuard(config.gateway, limiter=LocalRateLimiter())
    mirror = Mirror(text_preprocess(config), pools, sink, observer) if sink is not None else None
    return Gateway(config, text_preprocess(config), pools, quota=quota, mirror=mirror, observer=observer), observer


async def test_admitted_request_reports_pool_and_remaining_quota() -> None:
    gateway, observer = build(make_config(), ScriptedPool())
    metadata: list[tuple[str, str]] = []
    result = await gateway.chat(request(), metadata.extend)
    assert result.text.startswith("t0 ") and result.model == "main"
    assert ("x-served-by", "main") in metadata
    assert dict(metadata)["x-ratelimit-remaining-requests"] == "2"
    assert observer.decisions[("admitted", "default")] == 1


async def test_requests_over_the_limit_are_refused_with_retry_info() -> None:
    gateway, observer = build(make_config(), ScriptedPool())
    for i in range(3):
        await gateway.chat(request(f"r{i}"))
    with pytest.raises(ResourceExhausted) as e:
        await gateway.chat(request("r3"))
    assert "tenant acme" in e.value.message and e.value.retry_after_s > 0
    assert dict(e.value.metadata)["x-ratelimit-remaining-requests"] == "0"
    assert observer.decisions[("limited", "default")] == 1
    await gateway.chat(request("other", tenant="globex"))  # another tenant is unaffected


async def test_output_tokens_are_settled_even_when_the_stream_is_cancelled() -> None:
    config = make_config()
    gateway, observer = build(config, ScriptedPool(tokens=1000, delay_s=0.001))
    stream = gateway.stream(request())
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 20:
            break
    await stream.aclose()
    await asyncio.gather(*gateway._settlements)
    assert 20 <= observer.token_counts[("acme", "output")] <= 21
    # The settled tokens are real debt: the tenant's token limit now holds them.
    prompt = observer.token_counts[("acme", "prompt")]
    admission = await gateway.quota.admit(Identity(tenant="acme", user="bob"), 0)
    remaining_tokens = int(dict(admission.metadata)["x-ratelimit-remaining-tokens"])
    assert remaining_tokens <= 1000 - prompt - 20


async def test_a_saturated_pool_sheds_at_once() -> None:
    gateway, observer = build(make_config(), ScriptedPool(hang=True))
    streams = [gateway.stream(request(f"r{i}", tenant=f"t{i}")) for i in range(4)]
    tasks = [asyncio.create_task(anext(s)) for s in streams]
    await asyncio.sleep(0.05)
    with pytest.raises(ResourceExhausted) as e:  # liveness: shed at once, never queued behind the hung four
        await asyncio.wait_for(gateway.chat(request("r-extra", tenant="t-extra")), 0.5)
    assert "main is at capacity" in e.value.message
    assert observer.decisions[("shed", "default")] == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in streams:
        await s.aclose()
    assert gateway.admission.in_flight("main") == 0


def mirrored(**extra: Any) -> MuseServeConfig:
    return make_config(mirror={"candidate": "shadow", "fraction": 1.0, "timeout_s": 0.5, **extra})


async def test_mirror_records_both_answers_without_charging_the_quota(tmp_path: Path) -> None:
    sink = JsonlMirrorSink(tmp_path / "mirror.jsonl")
    shadow = ScriptedPool(tokens=3)
    gateway, observer = build(mirrored(), ScriptedPool(tokens=5), shadow, sink)
    await gateway.chat(request())
    await asyncio.wait_for(gateway.mirror.close(), 5)
    (record,) = read_records(str(tmp_path / "mirror.jsonl"))
    assert record.primary.status == "OK" and record.primary.text == "t0 t1 t2 t3 t4 "
    assert record.candidate.status == "OK" and record.candidate.output_tokens == 3
    assert record.candidate.pool == "shadow" and record.input is None  # content: outputs
    assert shadow.calls[0].request_id == "r1.mirror" and shadow.calls[0].priority > 1000
    assert observer.decisions[("admitted", "default")] == 1  # the copy made no decision
    assert observer.mirrors["recorded"] == 1


@pytest.mark.parametrize("shadow", [ScriptedPool(hang=True), ScriptedPool(fail_after=1), ScriptedPool(delay_s=0.2)])
async def test_a_slow_broken_or_hanging_candidate_never_touches_the_primary(
    tmp_path: Path, shadow: ScriptedPool
) -> None:
    sink = JsonlMirrorSink(tmp_path / "mirror.jsonl")
    gateway, observer = build(mirrored(), ScriptedPool(tokens=5), shadow, sink)
    # Liveness: the primary answers within the candidate's own delay; it does not wait for the copy.
    result = await asyncio.wait_for(gateway.chat(request()), 0.2)
    assert result.finish_reason is FinishReason.STOP
    await asyncio.wait_for(gateway.mirror.close(), 5)
    (record,) = read_records(str(tmp_path / "mirror.jsonl"))
    assert record.primary.status == "OK"
    assert record.candidate.status in {"DEADLINE_EXCEEDED", "UNAVAILABLE"}
    assert observer.mirrors["candidate_failed"] == 1


async def test_copies_beyond_the_cap_are_skipped(tmp_path: Path) -> None:
    sink = JsonlMirrorSink(tmp_path / "mirror.jsonl")
    gateway, observer = build(mirrored(max_in_flight=1), ScriptedPool(tokens=2), ScriptedPool(hang=True), sink)
    await gateway.chat(request("a", tenant="t1"))
    await gateway.chat(request("b", tenant="t2"))
    assert observer.mirrors["skipped"] == 1
    await asyncio.wait_for(gateway.mirror.close(), 5)


async def test_a_primary_failure_is_recorded_as_such(tmp_path: Path) -> None:
    sink = JsonlMirrorSink(tmp_path / "mirror.jsonl")
    gateway, _ = build(mirrored(), ScriptedPool(fail_after=2), ScriptedPool(tokens=2), sink)
    with pytest.raises(Unavailable):
        await gateway.chat(request())
    await asyncio.wait_for(gateway.mirror.close(), 5)
    (record,) = read_records(str(tmp_path / "mirror.jsonl"))
    assert record.primary.status == "UNAVAILABLE" and record.candidate.status == "OK"
