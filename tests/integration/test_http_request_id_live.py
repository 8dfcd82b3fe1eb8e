"""`x-request-id` once on every raw HTTP response of the session app, through Ray Serve's proxy:
answers, streams, refusals, and the routes that are not the OpenAI API."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx  # the HTTP client the openai package ships with
import pytest

from museserve.config import MuseServeConfig

from .conftest import TEST_KEY

pytestmark = pytest.mark.integration

KEY = {"authorization": f"Bearer {TEST_KEY}"}
HELLO = {"model": "muse-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def http(app_config: MuseServeConfig) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{app_config.server.http_port}", timeout=60) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("POST", "/v1/chat/completions", HELLO, KEY, 200),
        ("POST", "/v1/chat/completions", HELLO | {"stream": True}, KEY, 200),
        ("POST", "/v1/chat/completions", HELLO, {"authorization": "Bearer sk-unknown"}, 401),
        ("POST", "/v1/chat/completions", HELLO | {"model": "nope"}, KEY, 404),
        ("POST", "/v1/chat/completions", {"model": "muse-tiny"}, KEY, 400),
        ("GET", "/v1/models", None, KEY, 200),
        ("GET", "/healthz", None, {}, 200),
        ("GET", "/no-such-route", None, {}, 404),
    ],
)
def test_every_response_carries_the_request_id_once(http: httpx.Client, method, path, body, headers, status):
    response = http.request(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert len(response.headers.get_list("x-request-id")) == 1, response.headers


def test_the_header_names_the_request_the_body_names(http: httpx.Client):
    chosen = http.post("/v1/chat/completions", json=HELLO, headers=KEY | {"x-request-id": "live-id-1"})
    assert chosen.headers.get_list("x-request-id") == ["live-id-1"] and chosen.json()["id"] == "chatcmpl-live-id-1"
    generated = http.post("/v1/chat/completions", json=HELLO, headers=KEY)
    (request_id,) = generated.headers.get_list("x-request-id")
    assert generated.json()["id"] == f"chatcmpl-{request_id}"
