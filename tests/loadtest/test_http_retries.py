"""The HTTP transport's retries against a small aiohttp server on a loopback port: a 503 (with
the gateway's retry-after-ms) or a refused connection is sent again; a 429 and a stream that
began are not. The request body leaves an empty model as it is (the API's default model)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from museserve.client import RetryPolicy
from museserve_loadtest.http_transport import HttpTransport
from museserve_loadtest.plan import RequestSpec
from museserve_loadtest.records import Sample
from tests.support import free_port

QUICK = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
    {"choices": [{"index": 0, "delta": {"content": "hello"}}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
]


class Server:
    """Answers its first `refusals` requests with `status`, then streams CHUNKS (with
    `error_after_first` an error event follows the first chunk)."""

    def __init__(self, refusals: int, status: int = 503, error_after_first: bool = False):
        self.refusals, self.status, self.error_after_first = refusals, status, error_after_first
        self.bodies: list[dict] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        if len(self.bodies) <= self.refusals:
            error = {"error": {"message": "busy", "type": "server_error", "param": None, "code": "unavailable"}}
            return web.json_response(error, status=self.status, headers={"retry-after-ms": "20", "retry-after": "1"})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i, chunk in enumerate(CHUNKS):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if i == 0 and self.error_after_first:
                await response.write(b'data: {"error": {"message": "lost", "code": "unavailable"}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        return response


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def send(url: str, policy: RetryPolicy) -> Sample:
    transport = HttpTransport(url, retry=policy)
    sample = Sample(0, 0.0)
    try:
        await transport.send(RequestSpec(0, "hi", 4), sample, asyncio.get_running_loop().time, timeout_s=10)
    finally:
        await transport.close()
    return sample


async def test_a_503_is_sent_again_after_the_servers_delay_and_then_streams():
    server = Server(refusals=2)
    async with serving(server) as url:
        started = time.monotonic()
        sample = await send(url, QUICK)
    assert (sample.status, sample.retries, len(server.bodies)) == ("200", 2, 3)
    assert time.monotonic() - started >= 2 * 0.02  # retry-after-ms, not the shorter back-off
    assert sample.output_tokens == 1 and len(sample.token_times) == 1
    assert all(body["model"] == "" for body in server.bodies)


async def test_a_rate_limit_and_a_stream_that_began_are_not_sent_again():
    server = Server(refusals=1, status=429)
    async with serving(server) as url:
        sample = await send(url, QUICK)
    assert (sample.status, sample.retries, len(server.bodies)) == ("429", 0, 1)
    server = Server(refusals=0, error_after_first=True)
    async with serving(server) as url:
        sample = await send(url, QUICK)
    assert (sample.status, sample.retries, len(server.bodies)) == ("STREAM_unavailable", 0, 1)


async def test_a_refused_connection_is_retried_up_to_the_bound():
    sample = await send(f"http://127.0.0.1:{free_port()}", QUICK)
    assert (sample.status, sample.retries) == ("CONNECTION_ERROR", QUICK.max_attempts - 1)
    sample = await send(f"http://127.0.0.1:{free_port()}", RetryPolicy(max_attempts=1))
    assert (sample.status, sample.retries) == ("CONNECTION_ERROR", 0)
