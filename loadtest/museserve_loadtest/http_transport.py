"""The OpenAI-compatible HTTP API: streaming `/v1/chat/completions` over aiohttp, SSE parsed here.

An empty `model` (the workload's default) is sent as it is: the API serves it with its default
model, as gRPC does."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Mapping, Sequence

import aiohttp

from museserve.client import NO_RETRY, RetryPolicy

from .plan import RequestSpec
from .records import Clock, Sample


def _messages(spec: RequestSpec) -> list[dict]:
    if spec.messages:
        return [{"role": m.role, "content": m.text} for m in spec.messages]
    content: list[dict] = [{"type": "text", "text": spec.prompt}]
    for png in spec.images:
        url = "data:image/png;base64," + base64.b64encode(png).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    for wav in spec.audio:
        content.append(
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}
        )
    return [{"role": "user", "content": content}]


def to_openai(spec: RequestSpec) -> dict:
    body: dict = {
        "model": spec.model,
        "messages": _messages(spec),
        "max_completion_tokens": spec.max_output_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "mode": spec.mode,
        "user": spec.user,
    }
    if spec.temperature is not None:
        body["temperature"] = spec.temperature
    if spec.thinking_budget is not None:
        body["thinking_budget"] = spec.thinking_budget
    if spec.num_agents is not None:
        body["num_agents"] = spec.num_agents
    return body


def record_chunk(chunk: dict, sample: Sample, now: float) -> None:
    """One `data:` event. Usage: completion_tokens counts reasoning too; output is the rest."""
    if "error" in chunk:
        error = chunk["error"] or {}
        sample.status, sample.error = f"STREAM_{error.get('code') or 'error'}", str(error.get("message", ""))
        return
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content"):
            sample.token_times.append(now)
        if delta.get("content") and sample.answer_parts is not None:
            sample.answer_parts.append(delta["content"])
    usage = chunk.get("usage")
    if usage:
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
        sample.input_tokens = usage.get("prompt_tokens") or 0
        sample.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        sample.reasoning_tokens = reasoning
        sample.output_tokens = (usage.get("completion_tokens") or 0) - reasoning


# Statuses that mean "not served, nothing produced": gRPC's UNAVAILABLE, which RetryPolicy retries.
UNAVAILABLE_STATUSES = frozenset({"503", "CONNECTION_ERROR"})


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The server's delay: `retry-after-ms`, else `retry-after` in seconds (a date is ignored)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


class HttpTransport:
    """`retry`: how a request that got no answer (503, a connection that failed before any
    response) is sent again; a 200 has begun its stream, and is never sent again."""

    def __init__(
        self, base_url: str, *, ca_file: str | None = None, headers: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy = NO_RETRY,
    ):  # fmt: skip
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.headers = dict(headers)
        self.retry = retry
        ssl_context = None
        if ca_file:
            import ssl

            ssl_context = ssl.create_default_context(cafile=ca_file)
        self._connector_ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made lazily: it must be created inside the running loop
            connector = aiohttp.TCPConnector(limit=0, ssl=self._connector_ssl if self._connector_ssl else True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def send(self, spec: RequestSpec, sample: Sample, clock: Clock, timeout_s: float | None) -> None:
        headers = {**self.headers, "content-type": "application/json"}
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        body = to_openai(spec)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s  # of every attempt together
        for attempt in itertools.count(1):
            answered, server_delay_s = await self._post(body, headers, sample, clock, deadline)
            code = "UNAVAILABLE" if sample.status in UNAVAILABLE_STATUSES else sample.status or ""
            if not self.retry.retries(code, attempt, answered):
                return
            delay = self.retry.delay_s(attempt, server_delay_s)
            if deadline is not None and time.monotonic() + delay >= deadline:
                return
            sample.retries += 1
            await asyncio.sleep(delay)

    async def _post(
        self, body: dict, headers: dict[str, str], sample: Sample, clock: Clock, deadline: float | None
    ) -> tuple[bool, float | None]:
        """One attempt, its status set: whether a 200 began a stream, and the server's
        retry-after delay where it sent one."""
        sample.status, sample.error = None, ""
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        timeout = aiohttp.ClientTimeout(total=remaining)
        answered = False
        try:
            async with self._client().post(self.url, json=body, headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    sample.status, sample.error = str(resp.status), (await resp.text())[:500]
                    return False, retry_after_s(resp.headers)
                answered = True
                buffer = b""
                async for data in resp.content.iter_any():
                    now = clock()
                    buffer += data.replace(b"\r\n", b"\n")
                    # SSE: events end with a blank line; each `data:` line holds one JSON chunk.
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        for line in event.splitlines():
                            if not line.startswith(b"data:"):
                                continue
                            payload = line[5:].strip()
                            if payload == b"[DONE]":
                                sample.status = sample.status or "200"
                                return True, None
                            record_chunk(json.loads(payload), sample, now)
                sample.status = sample.status or "STREAM_TRUNCATED"
        except TimeoutError:
            sample.status = "DEADLINE_EXCEEDED"
        except aiohttp.ClientError as e:
            sample.status, sample.error = "CONNECTION_ERROR", str(e)
        return answered, None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
