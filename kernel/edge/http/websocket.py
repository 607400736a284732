"""Live streams over WebSocket, for browsers: each message of a Watch or TapRun stream as one
text frame of proto3 JSON, from the same service methods as the RPCs.

- ``/ws/watch`` (``?project=P`` to filter): Watch's ``WatchResponse`` messages, until the daemon
  stops (close 1001).
- ``/ws/runs/{run_id}/tap``: TapRun's ``RunEvent`` messages from the run's first event, closed
  (1000) after its terminal event.

A refusal or an error ends the stream with a close frame whose reason is ``<code>: <message>``
(the Connect code): 1008 for a bad path or parameter, a disallowed ``Origin`` or a missing
token; 1013 for a client that fell behind (``resource_exhausted``); 1001 when the daemon stops;
1011 otherwise. What a client sends is ignored. With a token configured, a stream needs
``Authorization: Bearer <token>``, or, from a browser (which cannot set headers on a WebSocket),
the subprotocols ``["foundry", "bearer.<token>"]``.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qs, unquote

import trio
from connectrpc.code import Code
from foundry.kernel.edge.grpc.message_check import WrongField, check_request
from foundry.kernel.edge.http.codecs import to_json
from foundry.kernel.edge.http.cors import OriginPolicy
from foundry.kernel.edge.http.errors import connect_error
from foundry.kernel.edge.http.routes import python_name
from foundry.kernel.edge.security import credential
from foundry.kernel.edge.shared_replies import JSON, SHARED_REPLIES, STREAM_FORMS
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import split_comma_header

log = logging.getLogger("foundry.http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

WATCH = "/foundry.Foundry/Watch"
TAP_RUN = "/fleetforge.runtime.v1.RuntimeService/TapRun"
TAP_PATH = re.compile(r"/ws/runs/([^/]+)/tap")
MAX_REASON = 123  # bytes of a close frame's reason (RFC 6455)
SUBPROTOCOL = "foundry"  # chosen when offered: new WebSocket(url, ["foundry", "bearer.TOKEN"])
BEARER = "bearer."
BEARER64 = "bearer64."  # then base64url of the token's UTF-8, unpadded (the dashboard's api.js)

CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_LATER = (
    1000, 1001, 1008, 1011, 1013,
)  # fmt: skip
CLOSE_CODE = {
    Code.INVALID_ARGUMENT: CLOSE_POLICY,
    Code.NOT_FOUND: CLOSE_POLICY,
    Code.UNAUTHENTICATED: CLOSE_POLICY,
    Code.PERMISSION_DENIED: CLOSE_POLICY,
    Code.RESOURCE_EXHAUSTED: CLOSE_TRY_LATER,
    Code.UNAVAILABLE: CLOSE_GOING_AWAY,
}


class Refused(Exception):
    """A stream refused before it starts (``code``: a Connect code)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _method(services: Iterable[Any], path: str) -> Callable[[Any], AsyncIterator[Any]]:
    for service in services:
        handler = service.__mapping__().get(path)
        if handler is not None:
            function: Callable[[Any], AsyncIterator[Any]] = getattr(
                service, python_name(path.rsplit("/", 1)[1])
            )
            return function
    raise LookupError(f"no service serves {path}")


class WebSocketStreams:
    def __init__(
        self,
        services: Iterable[Any],
        origins: OriginPolicy,
        token_check: Callable[[str | None], bool] | None,
    ) -> None:
        services = list(services)
        self._watch = _method(services, WATCH)
        self._tap = _method(services, TAP_RUN)
        self._watch_type = services_request_type(services, WATCH)
        self._tap_type = services_request_type(services, TAP_RUN)
        self._origins = origins
        self._token_check = token_check

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, accepting: Callable[[], bool]
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        offered = scope.get("subprotocols") or []
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if SUBPROTOCOL in offered:  # a browser that offered protocols needs one chosen
            accept["subprotocol"] = SUBPROTOCOL
        unreadable = _unreadable_extensions(scope)
        if unreadable is not None:
            await _deny(send, f"bad Sec-WebSocket-Extensions: {unreadable[:100]}")
            return
        try:
            await send(accept)
        except Exception as exc:  # noqa: BLE001 - the server's: the connection is no WebSocket
            # Bytes sent right behind the upgrade were read as HTTP (hypercorn answered 400):
            # the accept raised h11's error, and the server logged a traceback a connection
            log.debug("a WebSocket upgrade could not be accepted: %s", exc)
            return
        try:
            stream, end = self._open(scope, accepting())
        except Refused as refused:
            await _close(send, CLOSE_CODE.get(refused.code, CLOSE_POLICY), refused.code,
                         refused.message)  # fmt: skip
            return
        await pump(stream, end, receive, send)

    def _open(self, scope: Scope, accepting: bool) -> tuple[AsyncIterator[Any], tuple[int, str]]:
        """The stream the path names and how its end is announced, or :class:`Refused`."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and not self._origins.allows(origin):
            raise Refused(Code.PERMISSION_DENIED, f"origin {origin[:60]!r} is not allowed")
        if self._token_check is not None and not self._authorized(headers, scope):
            raise Refused(Code.UNAUTHENTICATED, "a bearer token is required")
        if not accepting:
            raise Refused(Code.UNAVAILABLE, "the daemon is shutting down")
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if path == "/ws/watch":
            unknown = set(query) - {"project"}
            if unknown:
                raise Refused(Code.INVALID_ARGUMENT, f"unknown parameter {sorted(unknown)[0]!r}"
                              " (expected: project)")  # fmt: skip
            project = query.get("project", [""])[-1]
            stream = self._watch(_checked(self._watch_type(project=project)))
            return stream, (CLOSE_GOING_AWAY, "the daemon is stopping")
        raw = scope.get("raw_path")  # (path is decoded once already: "%255f" was "_")
        tap = TAP_PATH.fullmatch(raw.decode("latin-1") if isinstance(raw, bytes) else path)
        if tap is not None:
            if query:  # (the tap takes none: they went unnoticed)
                raise Refused(Code.INVALID_ARGUMENT, f"unknown parameter {sorted(query)[0]!r} "
                              "(a run's tap takes none)")  # fmt: skip
            run_id = unquote(tap.group(1)) if isinstance(raw, bytes) else tap.group(1)
            stream = self._tap(_checked(self._tap_type(run_id=run_id)))
            return stream, (CLOSE_NORMAL, "the run finished")
        raise Refused(
            Code.NOT_FOUND,
            f"unknown path {path[:40]!r} (streams: /ws/watch, /ws/runs/RUN_ID/tap)",
        )

    def _authorized(self, headers: dict[str, str], scope: Scope) -> bool:
        """The ``Authorization`` header, or — browsers cannot set headers on a WebSocket — an
        offered subprotocol ``bearer.<token>``, or ``bearer64.<base64url of the token>`` for a
        token a subprotocol cannot carry as it is (a base64 one's ``/``, ``+``, ``=``)."""
        assert self._token_check is not None
        if "authorization" in headers:  # the header (once: ``security.credential``) it is
            return self._token_check(credential(scope["headers"]))
        offered = scope.get("subprotocols") or []
        credentials = [p for p in offered if p.startswith((BEARER, BEARER64))]
        # one, as one Authorization header: 1,000 offered in one handshake were 1,000 guesses
        if len(credentials) > 1:
            raise Refused(Code.UNAUTHENTICATED, f"{len(credentials)} bearer subprotocols were "
                          "offered: offer the token once")  # fmt: skip
        if not credentials:
            return False
        token = _offered_token(credentials[0])
        return bool(token) and self._token_check(f"Bearer {token}")


def _checked(request: Any) -> Any:
    """The request as the other edges check theirs (an id past 256 characters is refused)."""
    try:
        check_request(request)
    except WrongField as exc:
        raise Refused(Code.INVALID_ARGUMENT, f"request: {exc}") from None
    return request


def _offered_token(protocol: str) -> str:
    """The token an offered subprotocol carries ("" for none, or one that does not decode)."""
    if protocol.startswith(BEARER):
        return protocol[len(BEARER) :]
    if protocol.startswith(BEARER64):
        encoded = protocol[len(BEARER64) :]
        try:
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


def services_request_type(services: Iterable[Any], path: str) -> Any:
    for service in services:
        handler = service.__mapping__().get(path)
        if handler is not None:
            return handler.request_type
    raise LookupError(path)


async def pump(
    stream: AsyncIterator[Any], end: tuple[int, str], receive: Receive, send: Send
) -> None:
    """Send the stream's messages until it ends, fails, or the client goes."""
    async with trio.open_nursery() as nursery:

        async def client_gone() -> None:
            while (await receive())["type"] != "websocket.disconnect":
                pass  # what a client sends is ignored
            nursery.cancel_scope.cancel()

        nursery.start_soon(client_gone)
        (code, reason), reason_code = end, None
        forms = STREAM_FORMS.set(((JSON, to_json),))  # (its stream runs in this task)
        try:
            async with aclosing(stream) as messages:  # type: ignore[type-var]
                async for message in messages:
                    # A send given up (its client read nothing) returns as if sent: without
                    # this turn, the messages already waiting were all made and sent to no one
                    # before the disconnect was heard (200 such watchers held the loop 20 s).
                    await trio.lowlevel.checkpoint()
                    text = SHARED_REPLIES.encoded(message, JSON, to_json)  # once per event
                    await send({"type": "websocket.send", "text": text})
        except Exception as exc:
            error = connect_error(exc)
            code, reason_code, reason = CLOSE_CODE.get(error.code, CLOSE_ERROR), error.code, \
                error.message  # fmt: skip
        finally:
            STREAM_FORMS.reset(forms)
        await _close(send, code, reason_code, reason)
        nursery.cancel_scope.cancel()


def _unreadable_extensions(scope: Scope) -> str | None:
    """Why hypercorn's accept would fail on the client's ``Sec-WebSocket-Extensions`` (wsproto's
    own check, as hypercorn runs it: its last such header, permessage-deflate offered), or None.
    That failure left the upgrade unanswered and a traceback in the log, and it comes after
    hypercorn has marked the stream connected: too late to answer 400."""
    offers = None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"sec-websocket-extensions":
            offers = value
    if offers is None:
        return None
    try:
        server_extensions_handshake(split_comma_header(offers), [PerMessageDeflate()])
    except (ValueError, UnicodeDecodeError) as exc:
        return str(exc)
    return None


async def _deny(send: Send, reason: str) -> None:
    """Answer the upgrade 400 with ``reason``, before it is accepted."""
    await send({"type": "websocket.http.response.start", "status": 400,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
    await send({"type": "websocket.http.response.body", "body": reason.encode()})


async def _close(send: Send, code: int, connect_code: Code | None, message: str) -> None:
    reason = message if connect_code is None else f"{connect_code.value}: {message}"
    data = reason.encode()
    if len(data) > MAX_REASON:
        reason = data[: MAX_REASON - 3].decode(errors="ignore") + "..."
    try:
        await send({"type": "websocket.close", "code": code, "reason": reason})
    except Exception:  # the client went first
        log.debug("websocket closed by the client before the server's close", exc_info=True)
