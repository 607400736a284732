"""The ASGI application on the HTTP listener: CORS, the bearer token, the drain, then Connect and
gRPC-Web (``connectrpc``) for the RPCs — plain unary Connect calls of Emit by a shorter road
(``unary.py``) — and WebSocket streams (``websocket.py``).

Requests answered here, before connectrpc sees them: CORS preflights; a disallowed ``Origin``
(403); a missing or wrong token (401, ``unauthenticated``); a call while the daemon stops (503,
``unavailable``); a body whose declared length is over ``[daemon] max_message_bytes``
(``resource_exhausted``); an enveloped message flagged compressed with no encoding named
(``unimplemented``, as the gRPC port answers it); a path that names no RPC (404,
``unimplemented``); an RPC as GET (405: no RPC here is declared free of side effects, and a GET
could be forged by any web page). ``/`` and ``/dashboard/…`` are the browser dashboard's static
files (``dashboard/``), read with GET.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.server import ConnectASGIApplication
from foundry.kernel.edge.http import dashboard
from foundry.kernel.edge.http.codecs import BinaryCodec, JsonCodec, media_type, stream_forms
from foundry.kernel.edge.http.cors import OriginPolicy
from foundry.kernel.edge.http.gzip_body import BoundedGzip
from foundry.kernel.edge.http.internals import pick_loop_by_sniffio
from foundry.kernel.edge.http.large_requests import (
    DECODED,
    Decoded,
    decoded_ahead,
    worth_decoding_ahead,
)
from foundry.kernel.edge.http.routes import endpoints, paths_by_service
from foundry.kernel.edge.http.unary import UnaryFastPath
from foundry.kernel.edge.http.websocket import WebSocketStreams
from foundry.kernel.edge.security import credential
from foundry.kernel.edge.shared_replies import STREAM_FORMS

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

log = logging.getLogger("foundry.http")

ALLOWED_METHODS = "POST, GET, OPTIONS"
EXPOSED_HEADERS = (
    "Grpc-Status, Grpc-Message, Grpc-Status-Details-Bin, Content-Encoding, "
    "Connect-Content-Encoding, Connect-Accept-Encoding"
)
PREFLIGHT_MAX_AGE = "7200"


class _Rpcs(ConnectASGIApplication[None]):
    """connectrpc's application over our hand-built endpoints (no generated Connect code)."""

    @property
    def path(self) -> str:
        return "/"


TokenCheck = Callable[[str | None], bool]


class HttpApp:
    """The listener's application; ``accepting`` turns off when the daemon stops, ``active``
    counts the requests and WebSocket streams in flight."""

    def __init__(
        self,
        services: Iterable[Any],
        *,
        max_message_bytes: int,
        origins: OriginPolicy,
        token_check: TokenCheck | None,
        body_timeout: float = 60.0,
    ) -> None:
        pick_loop_by_sniffio()
        services = list(services)
        routes = endpoints(services)
        binary, json_codec = BinaryCodec(max_message_bytes), JsonCodec(max_message_bytes)
        self._gzip = BoundedGzip()
        connect_routes: Mapping[str, Any] = routes.endpoints
        self._rpcs = _Rpcs(
            service=None,
            endpoints=lambda _: connect_routes,
            read_max_bytes=max_message_bytes,
            codecs=[binary, json_codec],
            compressions=[self._gzip],  # (and identity, always)
        )
        codecs: dict[str, JsonCodec | BinaryCodec] = {"proto": binary, "json": json_codec}
        self._fast = UnaryFastPath(routes.unary, codecs, max_message_bytes)
        self._unary = routes.unary
        self._binary, self._json_codec = binary, json_codec
        self._routes = connect_routes
        self._streaming = frozenset(connect_routes) - frozenset(routes.unary)
        self._prefixes = paths_by_service(connect_routes)
        self._limit = max_message_bytes
        self._origins = origins
        self._token_check = token_check
        self._body_timeout = body_timeout
        self._streams = WebSocketStreams(services, origins, token_check)
        self.accepting = True
        self.active = 0
        self.idle = trio.Event()
        self.idle.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        self._enter()
        try:
            if kind == "websocket":
                await self._streams(scope, receive, send, lambda: self.accepting)
            elif kind == "http":
                await self._http(scope, receive, send)
        finally:
            self._leave()

    def _enter(self) -> None:
        self.active += 1
        if self.idle.is_set():
            self.idle = trio.Event()

    def _leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _framed_twice(scope):
            # RFC 9112 6.1: the server MUST close the connection after answering (h11 reads the
            # chunks and kept it open: a proxy framing by the length sees another request).
            # Its body read first: bytes arriving behind it while the answer went out made
            # hypercorn answer them at once, and the two answers collided (a traceback, none).
            await _drained(receive, self._limit, self._body_timeout)
            await _respond(send, 400, [(b"content-type", b"text/plain; charset=utf-8"),
                                       (b"connection", b"close")], FRAMED_TWICE)  # fmt: skip
            return
        if dashboard.is_dashboard_path(scope["path"]):  # public static files, no RPC
            await dashboard.serve(scope, send)
            return
        headers = _headers(scope)
        # trailers go out only to a request that said it takes them (hypercorn drops them else)
        trailers = "http.response.trailers" in scope.get("extensions", {}) and (
            headers.get("te") == "trailers"
        )
        origin = headers.get("origin")
        if scope["method"] == "OPTIONS":
            await self._preflight(origin, headers, send)
            return
        if origin is not None:
            if not self._origins.allows(origin):
                await _error(send, 403, "permission_denied", f"origin {origin[:100]!r} is "
                             "not allowed ([http] cors_origins)", headers,
                             trailers=trailers)  # fmt: skip
                return
            send = _with_cors(send, origin)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, code, message, extra = refusal
            await _error(send, status, code, message, headers, extra, trailers=trailers)
            return
        try:
            await self._call(scope, headers, _body_within(receive, self._body_timeout), send,
                             trailers)  # fmt: skip
        except _BodyTooSlow as exc:
            # answered (hypercorn then closes a connection whose request did not end)
            await _error(send, 408, "deadline_exceeded", exc.message, headers, trailers=trailers)

    async def _call(
        self,
        scope: Scope,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
        trailers: bool,
    ) -> None:
        if _is_enveloped(headers) and not _declared_encoding(headers) and _known_codec(headers):
            receive, first = await _peek(receive)
            if first & COMPRESSED:
                # connectrpc answered INTERNAL; the gRPC port answers this (grpclib) UNIMPLEMENTED
                await _error(send, 415, "unimplemented", UNDECLARED_COMPRESSION, headers,
                             trailers=trailers)  # fmt: skip
                return
            receive = _no_compressed_envelopes(receive)  # a later one's flag: the same answer
        try:
            if self._fast.takes(scope["path"], headers):
                traceparents = _all_of(scope, b"traceparent") if "traceparent" in headers else ()
                await self._fast(scope["path"], headers, receive, send, traceparents)
            elif scope["path"] in self._streaming:
                forms = STREAM_FORMS.set(self._stream_forms(headers))
                try:
                    await self._stream(_utf8_headers(scope), receive, send)
                finally:
                    STREAM_FORMS.reset(forms)
            else:
                receive, ahead = await self._decoded_ahead(scope["path"], headers, receive)
                token = DECODED.set(ahead)
                try:
                    await self._rpcs(_utf8_headers(scope), receive, _with_length(send))
                finally:
                    DECODED.reset(token)
        except ConnectError as exc:
            if exc.code is not Code.CANCELED:
                raise
            # connectrpc raises what it could not answer: a client gone mid-call. hypercorn
            # logged each with a 60-line traceback (resetting streams made ~100,000 lines).
            log.debug("%s: the client went away (%s)", scope["path"][:100], exc.message)

    async def _decoded_ahead(
        self, path: str, headers: Mapping[str, str], receive: Receive
    ) -> tuple[Receive, Decoded | None]:
        """A large unary request's message, decoded on a worker thread (``large_requests``)."""
        route = self._unary.get(path)
        enveloped = _is_enveloped(headers)
        kind = media_type(headers.get("content-type", ""))
        if route is None or not (enveloped or kind in ("application/json", "application/proto")):
            return receive, None
        encoding = _body_encoding(headers, enveloped)
        if encoding not in GRPC_ENCODINGS or not _known_codec(headers):
            return receive, None  # (connectrpc's answer: the encoding or codec it does not know)
        if not worth_decoding_ahead(headers, encoding == "gzip"):
            return receive, None
        codec = self._json_codec if kind.endswith("json") else self._binary
        inflate = self._inflate if encoding == "gzip" else None
        return await decoded_ahead(receive, enveloped, codec.decode, route.input, self._limit,
                                   inflate)  # fmt: skip

    def _inflate(self, data: bytes) -> bytes:
        return self._gzip.decompress(data, self._limit)  # as connectrpc inflates it

    @staticmethod
    def _stream_forms(headers: Mapping[str, str]) -> tuple[tuple[str, Any], ...]:
        """The form a stream's replies go out in, and its encoder (``STREAM_FORMS``)."""
        return stream_forms(headers.get("content-type", ""))

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A server-streaming call, ended when its client goes away: connectrpc only notes the
        disconnect between messages, and a Watch or TapRun with nothing to send waits for the
        next event — for good, on a project nobody emits to — holding its connection, a place of
        ``[daemon] max_connections`` and its memory."""
        with trio.CancelScope() as call:

            async def watched() -> MutableMapping[str, Any]:
                message = await receive()
                if message["type"] == "http.disconnect":
                    call.cancel()
                return message

            await self._rpcs(scope, watched, _with_length(send))

    def _refusal(
        self, scope: Scope, headers: Mapping[str, str]
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        if self._token_check is not None and not self._token_check(credential(scope["headers"])):
            required = "a bearer token is required (Authorization: Bearer <token>"
            if len([k for k, _ in scope["headers"] if k == b"authorization"]) > 1:
                required += ", once"
            return 401, "unauthenticated", required + ")", [(b"www-authenticate", b"Bearer")]
        if not self.accepting:
            return 503, "unavailable", "the daemon is shutting down", []
        path = scope["path"]
        if path not in self._routes:
            what = "method" if any(path.startswith(p) for p in self._prefixes) else "service"
            return 404, "unimplemented", f"unknown {what}: {path[:100]!r}", []
        if scope["method"] != "POST":
            return 405, "unimplemented", "RPCs are called with POST", [(b"allow", b"POST")]
        if (long := _long_protocol_header(headers)) is not None:
            # connectrpc's errors quoted them whole: 60 KB answers to a 60 KB header
            return 400, "invalid_argument", f"header {long}: longer than " \
                f"{MAX_PROTOCOL_HEADER} characters", []  # fmt: skip
        kind = headers.get("content-type", "")
        grpc = kind.startswith("application/grpc") and not kind.startswith("application/grpc-web")
        if grpc and "http.response.trailers" not in scope.get("extensions", {}):
            # gRPC needs trailers, which HTTP/1.1 has not: connectrpc answered UNKNOWN and
            # logged a traceback for each such call
            return 415, "unimplemented", "gRPC needs HTTP/2 (h2c here, or the gRPC port); " \
                "over HTTP/1.1 use Connect or gRPC-Web", []  # fmt: skip
        encoding = headers.get("grpc-encoding") or "identity"  # (as connectrpc reads it)
        if (
            kind.startswith("application/grpc")
            and _is_enveloped(headers)
            and (encoding not in GRPC_ENCODINGS)
        ):
            # gRPC's compression rule: UNIMPLEMENTED, naming the accepted ones in a header
            return 501, "unimplemented", f"unknown compression: {encoding[:24]!r}: supported " \
                "encodings are gzip", [(b"grpc-accept-encoding", b"gzip, identity")]  # fmt: skip
        if kind.startswith("application/connect+") and (problem := stream_header_problem(headers)):
            return 400, "invalid_argument", problem, []  # in its end-of-stream message (200)
        length = headers.get("content-length", "")
        # an enveloped body (gRPC, gRPC-Web, a Connect stream's) is its one message behind a
        # 5-byte prefix: a message of exactly the limit was refused there, not on Connect unary
        envelope = ENVELOPE_HEADER if _is_enveloped(headers) else 0
        if length.isdigit() and int(length) - envelope > self._limit:
            message = (f"request: {int(length) - envelope} bytes is over the {self._limit}-byte "
                       "message limit ([daemon] max_message_bytes)")  # fmt: skip
            return 429, "resource_exhausted", message, []  # Connect's status for the code
        return None

    async def _preflight(self, origin: str | None, headers: Mapping[str, str], send: Send) -> None:
        if origin is None or not self._origins.allows(origin):
            await _respond(send, 403, [(b"content-type", b"text/plain")],
                           b"origin not allowed ([http] cors_origins)\n")  # fmt: skip
            return
        allow = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            (b"vary", b"Origin, Access-Control-Request-Headers"),
        ]
        requested = headers.get("access-control-request-headers")
        if requested:
            allow.append((b"access-control-allow-headers", requested.encode("latin-1")))
        await _respond(send, 204, allow, b"")


def _with_cors(send: Send, origin: str) -> Send:
    """The response's start gets the CORS headers for an allowed ``origin``."""
    extra = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]

    async def cors_send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return cors_send


def _with_length(send: Send) -> Send:
    """A one-piece response (every unary one) gets a ``content-length``: connectrpc sends none,
    so HTTP/1.1 would frame it in chunks — a third write and a third packet per call."""
    start: MutableMapping[str, Any] | None = None

    async def length_send(message: MutableMapping[str, Any]) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if start is not None:
            head, start = start, None
            one_piece = message["type"] == "http.response.body" and not message.get("more_body")
            if not one_piece:
                await send(head)
            else:
                if not any(k == b"content-length" for k, _ in head.get("headers", ())):
                    length = str(len(message.get("body", b""))).encode()
                    head = {**head, "headers": [*head.get("headers", ()),
                                                (b"content-length", length)]}  # fmt: skip
                # The head and its body go together: a deadline landing between them sent a
                # 200 with its length and no body (the send watch still ends a stalled send)
                with trio.CancelScope(shield=True):
                    await send(head)
                    await send(message)
                return
        await send(message)

    return length_send


COMPRESSED = 0x01  # an envelope's flag: its message is compressed
GRPC_ENCODINGS = ("identity", "gzip")  # those connectrpc is given
ENVELOPE_HEADER = 5  # bytes before an envelope's message: its flags, its length (big-endian)
END_STREAM = 0x02  # a Connect stream's last envelope: its end (and error)


def _is_enveloped(headers: Mapping[str, str]) -> bool:
    """Connect streaming, gRPC-Web and gRPC frame messages in envelopes (flags, length);
    gRPC-Web-text's body is base64 (which connectrpc does not take)."""
    kind = headers.get("content-type", "")
    return kind.startswith(("application/connect+", "application/grpc")) and (
        not kind.startswith("application/grpc-web-text")
    )


def _known_codec(headers: Mapping[str, str]) -> bool:
    """The media type names a codec the daemon has (``+proto``, ``+json``, or none: proto);
    another is connectrpc's to answer 415, whatever its body's first byte says."""
    kind = headers.get("content-type", "").partition(";")[0].strip()
    _, plus, codec = kind.partition("+")
    return not plus or codec in ("proto", "json")


def _body_encoding(headers: Mapping[str, str], enveloped: bool) -> str:
    """The compression a unary request's body or envelope may use, named as connectrpc reads it
    (``content-encoding`` for Connect, ``grpc-encoding`` for gRPC and gRPC-Web)."""
    header = "grpc-encoding" if enveloped else "content-encoding"
    return headers.get(header) or "identity"


def _declared_encoding(headers: Mapping[str, str]) -> bool:
    """A compression named in the request's own protocol's header."""
    if headers.get("content-type", "").startswith("application/connect+"):
        encoding = headers.get("connect-content-encoding", "")
    else:
        encoding = headers.get("grpc-encoding", "")
    return encoding not in ("", "identity")


class _BodyTooSlow(ConnectError):
    """A request's body did not arrive within ``[http] body_timeout``: DEADLINE_EXCEEDED, as
    whoever reads the body (connectrpc, the fast path) answers it; if nobody did, the app."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            Code.DEADLINE_EXCEEDED,
            f"the request body did not arrive within {seconds:g} s ([http] body_timeout)",
        )


def _body_within(receive: Receive, seconds: float) -> Receive:
    """``receive``, raising :class:`_BodyTooSlow` if the body has not ended ``seconds`` after
    the headers (hypercorn times out each read, not a body trickled a byte at a time). Once the
    body has ended, what follows — a disconnect, awaited by a stream — is not bounded."""
    deadline = trio.current_time() + seconds
    ended = False

    async def bounded() -> MutableMapping[str, Any]:
        nonlocal ended
        if ended:
            return await receive()
        with trio.move_on_at(deadline):
            message = await receive()
            ended = message["type"] != "http.request" or not message.get("more_body", False)
            return message
        raise _BodyTooSlow(seconds)

    return bounded


async def _peek(receive: Receive) -> tuple[Receive, int]:
    """The body's first byte (0 if it is empty), and a ``receive`` that hands the messages read
    to find it out again first."""
    read: list[MutableMapping[str, Any]] = []
    first = 0
    while True:
        message = await receive()
        read.append(message)
        body = message.get("body", b"")
        if body:
            first = body[0]
            break
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replayed() -> MutableMapping[str, Any]:
        return read.pop(0) if read else await receive()

    return replayed, first


UNDECLARED_COMPRESSION = "compressed requests are not supported without a declared encoding"


def _no_compressed_envelopes(receive: Receive) -> Receive:
    """``receive``, reading the envelopes' headers as the body goes by: one flagged compressed
    (no encoding declared) raises UNIMPLEMENTED, as the first envelope's flag is answered —
    connectrpc answered a later one's INTERNAL."""
    header = bytearray()  # of the envelope being read
    skip = 0  # bytes of the current envelope's message still to pass

    async def checked() -> MutableMapping[str, Any]:
        nonlocal skip
        message = await receive()
        body = memoryview(message.get("body", b""))
        while body:
            if skip:
                taken = min(skip, len(body))
                skip, body = skip - taken, body[taken:]
                continue
            taken = min(ENVELOPE_HEADER - len(header), len(body))
            header.extend(body[:taken])
            body = body[taken:]
            if len(header) == ENVELOPE_HEADER:
                if header[0] & COMPRESSED:
                    raise ConnectError(Code.UNIMPLEMENTED, UNDECLARED_COMPRESSION)
                skip = int.from_bytes(header[1:], "big")
                header.clear()
        return message

    return checked


def _utf8_headers(scope: Scope) -> Scope:
    """``scope`` with each header value that is not UTF-8 re-encoded as the Latin-1 text it is
    (HTTP allows such bytes, and ``_headers`` reads them so): connectrpc decodes values as strict
    UTF-8, and a browser's ``X-Note: caf\xe9`` was a 500 with a traceback in the log."""
    headers = scope.get("headers", ())
    if all(value.isascii() for _, value in headers) and not any(
        name in CASELESS_HEADERS and not value.islower() for name, value in headers
    ):
        return scope
    # (and the media type and content coding in lower case, as ``_headers`` reads them:
    # connectrpc compares them case-sensitively, and answered Application/Grpc-Web+Proto a bare
    # 415, Content-Encoding: GZIP unimplemented)
    return {**scope, "headers": [
        (name, _as_utf8(value.lower() if name in CASELESS_HEADERS else value))
        for name, value in headers
    ]}  # fmt: skip


def _as_utf8(value: bytes) -> bytes:
    try:
        value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1").encode()
    return value


# The protocol's headers an error may quote (their values are a few characters each)
PROTOCOL_HEADERS = ("content-encoding", "connect-content-encoding", "connect-protocol-version",
                    "connect-timeout-ms", "grpc-encoding", "grpc-timeout")  # fmt: skip
MAX_PROTOCOL_HEADER = 256


def _long_protocol_header(headers: Mapping[str, str]) -> str | None:
    """The first of :data:`PROTOCOL_HEADERS` longer than :data:`MAX_PROTOCOL_HEADER`, if any."""
    return next((name for name in PROTOCOL_HEADERS
                 if len(headers.get(name, "")) > MAX_PROTOCOL_HEADER), None)  # fmt: skip


FRAMED_TWICE = b"a request framed by both Transfer-Encoding and Content-Length is refused\n"


async def _drained(receive: Receive, limit: int, seconds: float) -> None:
    """Read a request's body to its end, for ``seconds`` at most, up to about ``limit`` bytes."""
    read = 0
    with trio.move_on_after(seconds):
        while read <= limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            read += len(message.get("body", b""))


def _framed_twice(scope: Scope) -> bool:
    """An HTTP/1.1 request with both a ``transfer-encoding`` and a ``content-length`` header."""
    if not scope.get("http_version", "1.1").startswith("1"):
        return False  # HTTP/2 has no transfer-encoding (h2 refuses the header)
    names = {name for name, _ in scope.get("headers", ())}
    return b"transfer-encoding" in names and b"content-length" in names


# HTTP's media types and content codings are case-insensitive (RFC 9110, 8.3.1 and 8.4.1)
CASELESS_HEADERS = (b"content-type", b"content-encoding")


def _all_of(scope: Scope, name: bytes) -> tuple[str, ...]:
    """Every value of the header ``name`` (lower case), in order."""
    return tuple(v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name)


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by name, the first of a name given twice (as connectrpc reads them:
    the last one here let ``gzip`` then ``identity`` past the decode ahead, its 4 MB of statuses
    decoded on the loop); its media type and content coding in lower case (connectrpc takes
    ``Application/Connect+JSON``: the checks here saw another protocol's request in it, and
    answered as for one)."""
    pairs = scope.get("headers", ())
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(pairs)}
    for name in ("content-type", "content-encoding"):
        if name in headers:
            headers[name] = headers[name].lower()
    return headers


# Connect's codes as gRPC status numbers (each code is a gRPC code's name in lower case)
GRPC_STATUS = {
    "canceled": 1, "unknown": 2, "invalid_argument": 3, "deadline_exceeded": 4, "not_found": 5,
    "already_exists": 6, "permission_denied": 7, "resource_exhausted": 8,
    "failed_precondition": 9, "aborted": 10, "out_of_range": 11, "unimplemented": 12,
    "internal": 13, "unavailable": 14, "data_loss": 15, "unauthenticated": 16,
}  # fmt: skip


def stream_header_problem(headers: Mapping[str, str]) -> str | None:
    """What is wrong with a Connect stream's own headers, checked before connectrpc's: it
    answers them as a unary call's error (HTTP 400, a JSON body), where a stream's client reads
    only a 200 with an end-of-stream message (the Connect protocol, Streaming-Response)."""
    timeout = headers.get("connect-timeout-ms")
    if timeout is not None and not (timeout.isascii() and timeout.isdigit() and len(timeout) <= 10):
        return f"connect-timeout-ms: expected a number of at most 10 digits, got {timeout[:24]!r}"
    version = headers.get("connect-protocol-version")
    if version is not None and version != "1":
        return f"connect-protocol-version must be '1': got {version[:24]!r}"
    return None


async def _error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str],
    extra: Iterable[tuple[bytes, bytes]] = (),
    *,
    trailers: bool = False,
) -> None:
    """A Connect error (JSON body); a gRPC-Web caller gets its status in headers too, a gRPC
    caller in trailers (when the connection has them: ``trailers``), and a Connect stream in
    its end-of-stream message (its clients read the code from there)."""
    content_type = headers.get("content-type", "")
    response = [*extra]
    if content_type.startswith("application/grpc"):
        grpc_status = [(b"grpc-status", str(GRPC_STATUS.get(code, 2)).encode()),
                       (b"grpc-message", _percent(message).encode())]  # fmt: skip
        response.append((b"content-type", content_type.encode("latin-1")))
        if trailers and not content_type.startswith("application/grpc-web"):
            # gRPC over h2c: the status in trailers (grpcio took it in headers followed by an
            # empty DATA frame for a reset stream: UNKNOWN, "Stream removed")
            await _respond_with_trailers(send, response, grpc_status)
            return
        # gRPC-Web (and gRPC over HTTP/1.1, refused): a trailers-only response
        await _respond(send, 401 if status == 401 else 200, response + grpc_status, b"")
        return
    if content_type.startswith("application/connect+"):
        end = json.dumps({"error": {"code": code, "message": message}}).encode()
        response.append((b"content-type", content_type.encode("latin-1")))
        body = END_STREAM.to_bytes(1, "big") + len(end).to_bytes(4, "big") + end
        await _respond(send, 401 if status == 401 else 200, response, body)
        return
    body = json.dumps({"code": code, "message": message}).encode()
    response.append((b"content-type", b"application/json"))
    await _respond(send, status, response, body)


def _percent(text: str) -> str:
    """grpc-message is percent-encoded (the gRPC HTTP/2 spec)."""
    return quote(text, safe=GRPC_MESSAGE_SAFE)


GRPC_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


async def _respond_with_trailers(
    send: Send, headers: list[tuple[bytes, bytes]], trailers: list[tuple[bytes, bytes]]
) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": headers,
                "trailers": True})  # fmt: skip
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
