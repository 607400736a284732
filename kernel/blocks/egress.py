"""The egress policy of outbound HTTP from steps (the ``http`` step, the ``openai`` LLM provider).

Only ``http``/``https`` URLs, and only public addresses: loopback, private (RFC 1918, ULA),
link-local, carrier-grade NAT, unspecified, multicast, reserved and cloud metadata addresses —
also when IPv4-mapped or otherwise embedded in IPv6 — are refused unless ``[http] allow`` lists
them. An allow entry is a URL prefix (``http://127.0.0.1:8080/v1``: that scheme, host, port and
path prefix), a host (``localhost``, ``10.1.2.3``: any port), or a CIDR (``10.0.0.0/8``; a
metadata address is opened only by an entry naming it, never by a wider network).

:class:`EgressPolicy` is pure (standard library only). :func:`guarded_client` gives an
``httpx.AsyncClient`` that enforces it where it matters: each request's URL is checked before
anything is resolved, and each connection resolves its host itself, checks every address and
connects to a checked IP literal (so DNS rebinding cannot swap the address after the check; TLS
SNI and the ``Host`` header keep the hostname). Every request — each redirect hop too — opens its
own connection, so no connection opened for one URL serves another. Environment proxies are
ignored. Refusals never quote a URL's query string, and neither does httpx's request log.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx
from foundry.kernel.errors import BlockError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (IP literals, in preference order)
Resolver = Callable[[str, int], Awaitable[list[str]]]

SCHEMES = ("http", "https")
HINT = "allow it with [http] allow"
_QUOTE = 100  # most characters of a host a message quotes

METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IANA's special-purpose blocks that are not globally reachable, listed here: ``ipaddress``'
# own tables depend on the interpreter's patch release (3.11.7 counts 192.0.0.8, fec0::1 and
# 3fff::1 as global; later releases do not).
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32",
        "::/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "3fff::/20", "5f00::/16", "fec0::/10",
    )
)  # fmt: skip
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EgressRefused(BlockError):
    """The egress policy refused a request. The message names the host and the reason, never
    the URL's query."""


# --- the pure policy ----------------------------------------------------------------------------


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (e.g. "loopback address"), or None when it is."""
    if ip in METADATA:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = address_refusal(embedded)
            return None if reason is None else f"{reason} ({embedded} embedded in IPv6)"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip in _CGNAT:
        return "carrier-grade NAT address"
    if ip.is_multicast:
        return "multicast address"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return "private address"
    if ip.is_reserved or ip.is_private or not ip.is_global or _listed(ip, _NOT_GLOBAL):
        return "reserved address"  # documentation, benchmarking, future use, broadcast, …
    return None


def _listed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip in net for net in networks if net.version == ip.version)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, NAT64 (64:ff9b::/96) or 6to4 address reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


@dataclass(frozen=True)
class UrlPrefix:
    scheme: str
    host: str
    port: int
    path: str  # "" or "/…" without a trailing slash

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        return not self.path or path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True)
class Target:
    """A URL the policy accepted for now: its host is still to be resolved and checked, unless
    ``vouched`` (a URL prefix entry covers it)."""

    scheme: str
    host: str
    port: int
    vouched: bool


@dataclass(frozen=True)
class EgressPolicy:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()
    prefixes: tuple[UrlPrefix, ...] = ()

    @classmethod
    def from_allow(cls, entries: Iterable[str]) -> EgressPolicy:
        """The policy of an ``[http] allow`` list; ValueError names a bad entry and why."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        prefixes: list[UrlPrefix] = []
        for entry in entries:
            kind, value = parse_allow_entry(entry)
            if isinstance(value, UrlPrefix):
                prefixes.append(value)
            elif isinstance(value, str):
                hosts.add(value)
            else:
                networks.append(value)
        return cls(frozenset(hosts), tuple(networks), tuple(prefixes))

    def check_url(self, url: str) -> Target:
        """Check what can be checked before resolving: the scheme, a literal IP address, the
        URL prefix entries. Raises :class:`EgressRefused`."""
        try:
            parts = urllib.parse.urlsplit(url)
            scheme, host, port = parts.scheme.lower(), _host(parts.hostname or ""), parts.port
        except ValueError:
            raise EgressRefused("egress refused: not a valid URL") from None
        if scheme not in SCHEMES:
            shown = _quoted(host) if host else "URL"
            raise EgressRefused(
                f"egress to {shown} refused: scheme {_quoted(scheme)!r} (only http and https)"
            )
        if not host:
            raise EgressRefused("egress refused: the URL has no host")
        port = port if port is not None else _DEFAULT_PORTS[scheme]
        # vouched only if under a prefix however a server reads it: with empty segments kept,
        # and merged as nginx and Tomcat merge them (``/v1//../admin`` is ``/admin`` there),
        # after Tomcat's dropping of ``;parameters`` (``/v1/;/%2e%2e/admin`` is ``/admin``)
        merged = _MERGED_SLASHES.sub("/", _PATH_PARAMETERS.sub("", parts.path))
        paths = {_normal_path(parts.path), _normal_path(merged)}
        vouched = any(
            all(p.matches(scheme, host, port, path) for path in paths) for p in self.prefixes
        )
        literal = _ip(host)
        if literal is not None and not vouched:
            self.check_address(host, literal)
        return Target(scheme, host, port, vouched)

    def refusal(self, host: str, ip: IPAddress | str, *, vouched: bool = False) -> str | None:
        """Why connecting to ``ip`` (an address ``host`` resolved to) is refused, or None."""
        address = ip if not isinstance(ip, str) else ipaddress.ip_address(ip.split("%", 1)[0])
        reason = address_refusal(address)
        if reason is None or vouched or _host(host) in self.hosts:
            return None
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                candidates.append(embedded)
        # A metadata address needs an entry of its own: a wide network does not open it.
        exact = address in METADATA or any(a in METADATA for a in candidates)
        for net in self.networks:
            if exact and net.num_addresses > 1:
                continue
            if any(a in net for a in candidates if a.version == net.version):
                return None
        return reason

    def check_address(self, host: str, ip: IPAddress | str, *, vouched: bool = False) -> None:
        """Raise :class:`EgressRefused` unless connecting to ``ip`` for ``host`` is allowed."""
        reason = self.refusal(host, ip, vouched=vouched)
        if reason is None:
            return
        shown = _quoted(_host(host))
        address = str(ip).split("%", 1)[0]
        if _ip(_host(host)) is not None:
            raise EgressRefused(f"egress to {shown} refused: {reason} ({HINT})")
        raise EgressRefused(
            f"egress to {shown} refused: it resolves to {address}, a {reason} ({HINT})"
        )


def parse_allow_entry(entry: str) -> tuple[str, UrlPrefix | str | IPNetwork]:
    """One ``[http] allow`` entry: ``("url", UrlPrefix)``, ``("host", name)`` or
    ``("cidr", network)`` (an IP address is a one-address network). ValueError says why not."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError("expected a non-empty string")
    text = entry.strip()
    if "://" in text:
        return "url", _parse_prefix(text)
    if "/" in text:
        try:
            return "cidr", ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a CIDR network: {exc}") from None
    literal = _ip(_host(text))
    if literal is not None:
        return "cidr", ipaddress.ip_network(literal)
    host = _host(text)
    if not host or any(c in host for c in ":@?#[]*/\\ ") or not all(host.split(".")):
        raise ValueError("expected a URL prefix (http://host:port/path), a host or a CIDR")
    return "host", host


def _parse_prefix(text: str) -> UrlPrefix:
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError("a URL prefix must be http:// or https://")
    if not parts.hostname:
        raise ValueError("a URL prefix needs a host")
    if parts.username is not None or parts.query or parts.fragment or "?" in text:
        raise ValueError("a URL prefix may not have credentials, a query or a fragment")
    path = _normal_path(parts.path).rstrip("/")
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    return UrlPrefix(scheme, _host(parts.hostname), port, path)


def redact_url(url: str | httpx.URL) -> str:
    """``scheme://host:port/path`` of a URL: no credentials, query or fragment (for logs and
    messages)."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _host(host: str) -> str:
    """A host as compared: lower case, no brackets, no trailing dot, IDNA (punycode)."""
    host = host.strip().strip("[]").rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


_MERGED_SLASHES = re.compile(r"(?:/|\\|%2[fF]|%5[cC])+")
_PATH_PARAMETERS = re.compile(r"(?:;|%3[bB])[^/]*")


def _normal_path(path: str) -> str:
    """``path`` with ``.``/``..`` segments resolved, as a server would (``%2e``, ``%2f`` and
    ``%5c`` decoded first: a server may decode them; and a backslash read as a slash, as some
    servers do: ``/ok/..\\admin`` is ``/admin``, not under ``/ok``; and ``..;x`` as ``..``)."""
    for encoded, plain in (("%2e", "."), ("%2E", "."), ("%2f", "/"), ("%2F", "/"), ("%5c", "/"),
                           ("%5C", "/"), ("\\", "/"), ("%3b", ";"), ("%3B", ";")):  # fmt: skip
        path = path.replace(encoded, plain)
    out: list[str] = []
    for segment in path.split("/")[1:]:
        # ``..;x`` is ``..`` to a server that drops a segment's ``;`` parameters (Tomcat, Jetty,
        # Spring: ``/v1/..;/admin`` is ``/admin``), so it is one here too
        bare = segment.split(";", 1)[0]
        if bare == "..":
            if out:
                out.pop()
        elif bare != ".":
            out.append(segment)
    if path.rsplit("/", 1)[-1].split(";", 1)[0] in (".", ".."):
        out.append("")
    return "/" + "/".join(out) if path else ""


def _quoted(text: str) -> str:
    return text if len(text) <= _QUOTE else text[:_QUOTE] + "…"


# --- the guarded client ---------------------------------------------------------------------------


async def resolve(host: str, port: int) -> list[str]:
    """The IP literals ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves a host itself, checks every address, connects to a checked IP literal."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        vouched: Target | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.policy = policy
        self.vouched = vouched  # a URL prefix entry covers this request's host and port
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()
        self.resolver = resolver if resolver is not None else resolve

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout if timeout is not None else float("inf")):
                addresses = await self.resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {_quoted(host)} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {_quoted(host)}: {exc}") from None
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {_quoted(host)}: no address")
        target = self.vouched
        vouched = target is not None and (_host(host), port) == (target.host, target.port)
        for address in addresses:  # every address, before connecting to any
            self.policy.check_address(host, address, vouched=vouched)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("egress to a unix socket refused")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    # most specific first
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    """httpcore's exceptions as httpx's (what httpx's own transport does)."""
    try:
        yield
    except Exception as exc:
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    """A response body; closing it closes the request's connection pool."""

    def __init__(self, stream: Any, pool: httpcore.AsyncConnectionPool) -> None:
        self.stream, self.pool = stream, pool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self.stream:
                yield part

    async def aclose(self) -> None:
        try:
            if hasattr(self.stream, "aclose"):
                await self.stream.aclose()
        finally:
            await self.pool.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks each request's URL, then sends it through a connection
    pool of its own whose network backend is a :class:`GuardedBackend`."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        verify: ssl.SSLContext | bool = True,
        inner: httpcore.AsyncNetworkBackend | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.policy = policy
        self.ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        self.inner, self.resolver = inner, resolver

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self.policy.check_url(str(request.url))
        backend = GuardedBackend(
            self.policy,
            vouched=target if target.vouched else None,
            inner=self.inner,
            resolver=self.resolver,
        )
        pool = httpcore.AsyncConnectionPool(
            ssl_context=self.ssl_context,
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=backend,
        )
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            with _httpx_errors():
                response = await pool.handle_async_request(core_request)
        except BaseException:
            await pool.aclose()
            raise
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, pool),
            extensions=response.extensions,
        )


def guarded_client(
    policy: EgressPolicy,
    *,
    timeout: float | httpx.Timeout = 30.0,
    follow_redirects: bool = False,
    verify: ssl.SSLContext | bool = True,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    resolver: Resolver | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose every request and connection follows ``policy``.

    ``network_backend`` (what connects to a checked IP literal; httpcore's AnyIO backend by
    default) and ``resolver`` (host, port → IP literals) are for tests."""
    transport = GuardedTransport(policy, verify=verify, inner=network_backend, resolver=resolver)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=follow_redirects,
        trust_env=False,  # HTTP(S)_PROXY and friends would connect elsewhere than checked
    )


MAX_REDIRECTS = 20  # as httpx's own


async def request_bounded(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    limit: int,
    *,
    follow_redirects: bool = False,
    **request: Any,
) -> tuple[httpx.Response, bytes]:
    """``client.request(method, url, **request)``, its body read as it comes (decompressed) and
    refused (BlockError) past ``limit`` bytes: a server's 800 MB answer was read whole into the
    daemon (RSS 129 → 2,284 MB) before the step's size check refused it. Redirects are followed
    here, each hop's body left unread (httpx reads every hop's whole body), each hop checked
    by the client's transport as any request."""
    try:
        next_request: httpx.Request | None = client.build_request(method, url, **request)
        for _ in range(MAX_REDIRECTS + 1):
            assert next_request is not None
            response = await client.send(next_request, stream=True, follow_redirects=False)
            try:
                next_request = response.next_request if follow_redirects else None
                if next_request is None:
                    return response, await _bounded_body(response, method, url, limit)
            finally:
                await response.aclose()
    except httpx.InvalidURL:  # its words quote the URL's parts: "Invalid port: 'PASSWORD'"
        raise BlockError(
            f"{method}: a URL (the request's or a redirect's) httpx cannot send: its host or "
            "port is malformed (a password holding '/', '?' or '#' must be percent-encoded)"
        ) from None
    raise BlockError(f"{method} {redact_url(url)}: more than {MAX_REDIRECTS} redirects")


async def _bounded_body(response: httpx.Response, method: str, url: str, limit: int) -> bytes:
    """The body, gzip or deflate inflated here, at most up to the limit: httpx's decoder
    inflates each network chunk whole (a 64 KiB chunk can become 64 MB before it is counted),
    and it took every encoding but a lone ``gzip``/``deflate`` — ``gzip, gzip`` made a 980-byte
    answer 512 MB in the daemon. One such layer is inflated; more are refused; any other
    coding (httpx knows none but those) is left as it came."""
    encoding = _zlib_layer(response.headers.get("content-encoding", ""), method, url)
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding else None
    source = response.aiter_raw()
    chunks: list[bytes] = []
    total = received = 0
    too_much = BlockError(f"{method} {redact_url(url)} answered more than {limit} bytes (the "
                          "body is not read past the step's size limit)")  # fmt: skip
    async for data in source:
        received += len(data)  # as it came: bytes past a gzip body's end inflate to nothing,
        if received > limit:  # and were read on without end (300 MB: 434 s and 633 MB)
            raise too_much
        while data:
            if inflate is None:
                chunk, data = data, b""
            elif inflate.eof and not data.strip(b"\0"):
                break  # zeros past the last member: padding, as gzip itself reads them
            else:
                if inflate.eof:  # the next member (or refused as not inflating)
                    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)
                try:
                    chunk = inflate.decompress(data, limit - total + 1)
                except zlib.error:
                    raise BlockError(f"{method} {redact_url(url)} answered a {encoding} body "
                                     "that does not inflate") from None  # fmt: skip
                data = inflate.unused_data if inflate.eof else inflate.unconsumed_tail
            total += len(chunk)
            if total > limit:
                raise too_much
            if chunk:
                chunks.append(chunk)
    return b"".join(chunks)


_ZLIB_ENCODINGS = ("gzip", "x-gzip", "deflate")


def _zlib_layer(header: str, method: str, url: str) -> str:
    """The one gzip/deflate coding a ``Content-Encoding`` names ("" for none); BlockError for
    two or more (each could multiply the body a thousandfold)."""
    layers = [c for c in (c.strip().lower() for c in header.split(",")) if c in _ZLIB_ENCODINGS]
    if len(layers) > 1:
        raise BlockError(f"{method} {redact_url(url)} answered a body compressed "
                         f"{len(layers)} times ({header.strip()[:100]!r}): one gzip or deflate "
                         "layer is inflated, no more")  # fmt: skip
    return layers[0] if layers else ""


# --- httpx's request log without query strings -------------------------------------------------


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO: a line per ``http`` step and LLM call, and
    a webhook's token is in its path (Slack, Discord, Telegram). That line is kept only when the
    daemon logs at DEBUG, naming the origin alone; any other keeps scheme://host:port/path."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_line = record.levelno == logging.INFO and str(record.msg).startswith("HTTP Req")
        if request_line and not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        redact = _origin if request_line else redact_url
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


def _origin(url: httpx.URL) -> str:
    """``scheme://host:port`` of a URL (its path, query and credentials left out)."""
    return redact_url(url.copy_with(path="/")).rstrip("/")


def _redact_httpx_log() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactUrls) for f in logger.filters):
        logger.addFilter(_RedactUrls())


_redact_httpx_log()
