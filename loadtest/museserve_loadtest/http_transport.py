"""The OpenAI-compatible HTTP API: streaming `/v1/chat/completions` over aiohttp, SSE parsed here."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

import aiohttp

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


class HttpTransport:
    def __init__(self, base_url: str, *, ca_file: str | None = None, headers: Sequence[tuple[str, str]] = ()):
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.headers = dict(headers)
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
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._client().post(self.url, json=to_openai(spec), headers=headers, timeout=timeout) as resp:
                if resp.status != 200:
                    sample.status, sample.error = str(resp.status), (await resp.text())[:500]
                    return
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
                                return
                            record_chunk(json.loads(payload), sample, now)
                sample.status = sample.status or "STREAM_TRUNCATED"
        except TimeoutError:
            sample.status = "DEADLINE_EXCEEDED"
        except aiohttp.ClientError as e:
            sample.status, sample.error = "CONNECTION_ERROR", str(e)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
