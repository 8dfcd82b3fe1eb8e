"""Image URL fetching: refusals at the address check, and real HTTP against a local server.

The local server listens on 127.0.0.1. A strict fetcher must refuse it (loopback). A
fetcher that trusts exactly 127.0.0.1/32 stands in for a public host, so redirects from
it into private, link-local or other loopback addresses show the per-hop checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from museserve.config.preprocess import MediaLimits
from museserve.errors import InvalidArgument
from museserve.preprocess.images import load_image
from museserve.preprocess.url_fetch import ImageFetcher, refusal, system_resolve
from tests import media_corpus as mc

FIELD = "messages[0].content[0].image.url"
LIMITS = MediaLimits(allow_image_urls=True, url_timeout_s=2.0, max_url_redirects=3)
PNG = mc.png()
DNS = {
    "public.test": ["127.0.0.1"],
    "internal.test": ["10.0.0.5"],
    "mixed.test": ["93.184.216.34", "127.0.0.2"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.1.2"],
    "mapped.test": ["::ffff:127.0.0.1"],
}


async def fake_resolve(host: str) -> list[str]:
    if host not in DNS:
        raise OSError(f"no such host {host}")
    return DNS[host]


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[tuple[int, Counter[str]]]:
    hits: Counter[str] = Counter()
    release = asyncio.Event()  # set at shutdown, so a slow handler never delays cleanup

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        hits[path] += 1
        hits[f"host={request.host}"] += 1
        if path == "/img":
            return web.Response(body=PNG, content_type="image/png")
        if path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        if path == "/loop":
            raise web.HTTPFound("/loop")
        if path == "/declared-large":
            return web.Response(body=b"x" * 5000, content_type="image/png")
        if path == "/streamed-large":
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(50):
                await response.write(b"x" * 1000)
            return response
        if path == "/slow":
            await release.wait()
        if path == "/gzip":
            return web.Response(body=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
        return web.Response(status=500, text="SECRET internal stack trace")

    runner = web.AppRunner(_app(handle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port, hits
    finally:
        release.set()
        await runner.cleanup()


def _app(handle) -> web.Application:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


def strict(limits: MediaLimits = LIMITS) -> ImageFetcher:
    return ImageFetcher(limits, resolve=fake_resolve)


def trusting_local(limits: MediaLimits = LIMITS) -> ImageFetcher:
    return ImageFetcher(limits, resolve=fake_resolve, trusted_networks=["127.0.0.1/32"])


async def refused(fetcher: ImageFetcher, url: str, match: str, max_bytes: int = 1 << 20) -> None:
    with pytest.raises(InvalidArgument, match=match) as caught:
        await fetcher.fetch(url, FIELD, max_bytes)
    assert caught.value.field == FIELD and "SECRET" not in caught.value.message


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "172.16.3.4", "192.168.1.1", "127.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
     "240.0.0.1", "255.255.255.255", "192.0.2.1", "::1", "::", "fe80::1%eth0", "fc00::1", "ff02::1",
     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::1", "64:ff9b::a00:5"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str):
    assert refusal(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str):
    assert refusal(address) is None


async def test_urls_must_be_enabled_and_http():
    await refused(strict(MediaLimits()), "https://example.com/a.png", "image URLs are not enabled on this service")
    for url in ["ftp://example.com/a.png", "file:///etc/passwd", "data:image/png;base64,AAAA", "example.com/a.png"]:
        await refused(strict(), url, "is not allowed; use http or https")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("public.test", "127.0.0.1 is a loopback"),
        ("internal.test", "10.0.0.5 is a private"),
        ("mixed.test", "127.0.0.2 is a loopback"),
        ("metadata.test", "169.254.169.254 is a link-local"),
        ("cgnat.test", "carrier-grade NAT"),
        ("mapped.test", "embeds 127.0.0.1 is a loopback"),
        ("nowhere.test", "could not be resolved"),
    ],
)
async def test_private_targets_are_refused_before_connecting(host: str, reason: str):
    async with serve() as (port, hits):
        await refused(strict(), f"http://{host}:{port}/img", reason)
    assert hits["/img"] == 0


async def test_the_real_resolver_refuses_localhost():
    assert set(await system_resolve("localhost")) <= {"127.0.0.1", "::1"}
    async with serve() as (port, hits):
        await refused(ImageFetcher(LIMITS), f"http://localhost:{port}/img", "loopback")
    assert hits["/img"] == 0


async def test_fetch_and_decode_through_a_redirect_keeping_the_host_name():
    async with serve() as (port, hits):
        data, content_type = await trusting_local().fetch(f"http://public.test:{port}/redirect?to=/img", FIELD, 1 << 20)
    assert (data, content_type) == (PNG, "image/png")
    assert hits[f"host=public.test:{port}"] == 2  # the Host header names the URL's host, not the pinned address
    assert load_image(data, content_type, LIMITS, FIELD).num_tokens == 12


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://internal.test:{port}/img", "10.0.0.5 is a private"),
        ("http://127.0.0.2:{port}/img", "127.0.0.2 is a loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ],
)
async def test_redirects_into_private_space_are_refused(target: str, reason: str):
    async with serve() as (port, hits):
        url = f"http://public.test:{port}/redirect?to={target.format(port=port)}"
        await refused(trusting_local(), url, reason)
    assert hits["/redirect"] == 1 and hits["/img"] == 0


async def test_too_many_redirects():
    async with serve() as (port, hits):
        await refused(trusting_local(), f"http://public.test:{port}/loop", "redirected more than 3 times")
    assert hits["/loop"] == 4


async def test_bodies_over_the_bound_are_refused():
    async with serve() as (port, _):
        for path in ("/declared-large", "/streamed-large"):
            await refused(trusting_local(), f"http://public.test:{port}{path}", "larger than 4096 bytes", 4096)


async def test_timeout_status_and_encoding():
    async with serve() as (port, _):
        quick = trusting_local(MediaLimits(allow_image_urls=True, url_timeout_s=0.2))
        await refused(quick, f"http://public.test:{port}/slow", "did not answer within 0.2 s")
        await refused(trusting_local(), f"http://public.test:{port}/missing", "answered HTTP 500")
        await refused(trusting_local(), f"http://public.test:{port}/gzip", "Content-Encoding 'gzip'")


async def test_one_lookup_per_connection_and_numeric_hosts_refused():
    asked: list[str] = []

    async def counting(host: str) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"] if len(asked) == 1 else ["10.0.0.5"]  # a rebinding server's second answer

    async with serve() as (port, hits):
        fetcher = ImageFetcher(LIMITS, resolve=counting, trusted_networks=["127.0.0.1/32"])
        assert (await fetcher.fetch(f"http://rebind.test:{port}/img", FIELD, 1 << 20))[0] == PNG
        for numeric in ("2130706433", "127.1", "0x7f.0.0.1"):
            with pytest.raises(InvalidArgument):
                await ImageFetcher(LIMITS).fetch(f"http://{numeric}:{port}/img", FIELD, 1 << 20)
    assert asked == ["rebind.test"] and hits["/img"] == 1
