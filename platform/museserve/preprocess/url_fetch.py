"""Fetches http(s) image URLs for clients, never from a private address (no SSRF).

Design: the address check sits in the one place every connection gets its address. The
aiohttp connector is given `_VettedResolver`, which resolves a name once and refuses it
if ANY answer is not public; the connector then connects to exactly those vetted
addresses, so there is no second lookup a rebinding DNS server could answer differently.
The URL's host name stays the TLS SNI name and the Host header. IP literals skip
resolvers in aiohttp, so they are checked before the request. Redirects are never
followed by aiohttp: each Location is checked like a new URL, up to `max_url_redirects`.
Proxies from the environment are ignored (they would connect on our behalf, unchecked).

Tests inject `resolve` (host -> addresses) to simulate DNS answers, and may name
`trusted_networks` so that a test server on 127.0.0.1 can stand in for a public host;
the checks themselves are not replaceable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from museserve.config.preprocess import MediaLimits
from museserve.errors import InvalidArgument

Resolve = Callable[[str], Awaitable[Sequence[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_REDIRECTS = (301, 302, 303, 307, 308)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CHUNK = 64 << 10


def refusal(address: str) -> str | None:
    """Why a connection to `address` is refused, or None when it is a public address."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a dual-stack socket connects to the IPv4 address itself
            reason = refusal(str(ip.ipv4_mapped))
            return f"{ip} embeds {reason}" if reason else None
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (reason := refusal(str(embedded))):
            return f"{ip} embeds {reason}"
    if ip in _CGNAT:
        return f"{ip} is a carrier-grade NAT address"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


async def system_resolve(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _VettedResolver(AbstractResolver):
    def __init__(self, resolve: Resolve, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        self._resolve = resolve
        self._trusted = trusted

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = list(await self._resolve(host))
        except OSError:
            raise _Refused(f"host {host!r} could not be resolved") from None
        if not addresses:
            raise _Refused(f"host {host!r} has no addresses")
        for address in addresses:
            _check(address, self._trusted)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        pass


def _check(address: str, trusted: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> None:
    reason = refusal(address)
    if reason is None:
        return
    try:
        if any(ipaddress.ip_address(address.split("%", 1)[0]) in net for net in trusted):
            return
    except ValueError:
        pass
    raise _Refused(reason)


class ImageFetcher:
    def __init__(self, limits: MediaLimits, resolve: Resolve = system_resolve, trusted_networks: Sequence[str] = ()):
        self._limits = limits
        self._resolve = resolve
        self._trusted = tuple(ipaddress.ip_network(n) for n in trusted_networks)

    async def fetch(self, url: str, field: str, max_bytes: int) -> tuple[bytes, str]:
        """The body and content type (without parameters) of an image URL, redirects followed."""
        if not self._limits.allow_image_urls:
            raise InvalidArgument("image URLs are not enabled on this service", field=field)
        timeout_s = self._limits.url_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await self._fetch(url, field, max_bytes)
        except TimeoutError:
            raise InvalidArgument(f"image URL did not answer within {timeout_s:g} s", field=field) from None
        except _Refused as refused:
            raise InvalidArgument(f"image URL refused: {refused.reason}", field=field) from None
        except aiohttp.InvalidURL:
            raise InvalidArgument("image URL is not a valid URL", field=field) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise InvalidArgument(f"image URL could not be fetched ({type(exc).__name__})", field=field) from None

    async def _fetch(self, url: str, field: str, max_bytes: int) -> tuple[bytes, str]:
        connector = aiohttp.TCPConnector(resolver=_VettedResolver(self._resolve, self._trusted), use_dns_cache=False)
        headers = {"Accept": "image/png, image/jpeg, image/webp", "Accept-Encoding": "identity"}
        async with aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False) as session:
            target = self._checked_url(url, field)
            for _ in range(self._limits.max_url_redirects + 1):
                async with session.get(target, allow_redirects=False, headers=headers) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        target = self._checked_url(str(target.join(URL(response.headers["Location"]))), field)
                        continue
                    return await _read_body(response, field, max_bytes)
        raise InvalidArgument(f"image URL redirected more than {self._limits.max_url_redirects} times", field=field)

    def _checked_url(self, url: str, field: str) -> URL:
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            raise InvalidArgument("image URL is not a valid URL", field=field) from None
        if parsed.scheme not in ("http", "https"):
            raise InvalidArgument(f"image URL scheme {parsed.scheme!r} is not allowed; use http or https", field=field)
        if not parsed.host:
            raise InvalidArgument("image URL has no host", field=field)
        host = parsed.host.strip("[]")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return parsed  # a name: the resolver checks every address it resolves to
        _check(host, self._trusted)
        return parsed


async def _read_body(response: aiohttp.ClientResponse, field: str, max_bytes: int) -> tuple[bytes, str]:
    if not 200 <= response.status < 300:
        raise InvalidArgument(f"image URL answered HTTP {response.status}", field=field)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidArgument(f"image URL answered with Content-Encoding {encoding!r}", field=field)
    too_large = InvalidArgument(f"image at URL is larger than {max_bytes} bytes", field=field)
    if response.content_length is not None and response.content_length > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return bytes(body), content_type
