"""The HTTP body limit, driven through the ASGI interface directly."""

from __future__ import annotations

import json
from types import SimpleNamespace

from museserve.api.openai.body_limit import BodyLimit


class Downstream:
    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, scope, receive, send) -> None:
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(headers: list[tuple[bytes, bytes]], chunks: list[bytes], limit: int = 10):
    app = Downstream()
    scope = {"type": "http", "headers": headers, "app": SimpleNamespace(state=SimpleNamespace(max_request_bytes=limit))}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return pending.pop(0)

    async def send(message):
        sent.append(message)

    await BodyLimit(app)(scope, receive, send)
    return app, sent


async def test_a_body_within_the_limit_passes() -> None:
    app, sent = await call([(b"content-length", b"5")], [b"hello"])
    assert app.body == b"hello" and sent[0]["status"] == 200


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    app, sent = await call([(b"content-length", b"11")], [b"x" * 11])
    assert app.body == b"" and sent[0]["status"] == 413
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "request_too_large" and "10 bytes" in error["message"]


async def test_a_chunked_body_is_counted_as_it_arrives() -> None:
    _, sent = await call([], [b"x" * 6, b"x" * 6])
    assert sent[0]["status"] == 413
