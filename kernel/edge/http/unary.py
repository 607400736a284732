"""A short road for the hot unary RPCs (Emit) over the Connect protocol.

connectrpc's generic request path costs more per call than the handler behind it: a deadline scope,
a task watching for a disconnect, header objects, a request context, interceptor runs, and gzip for
any client that accepts it (httpx, browsers), even for a reply of a few dozen bytes. A plain unary
Connect POST of a method in :data:`FAST_PATHS` is answered here instead — the same handler object
(``routes.UnaryRoute``), the same codec instances (so the same size limit and type check), the same
error table and Connect error body — after the same CORS, token, drain and routing checks in
``app.py``. Anything else (a deadline header, a compressed body, another content type, gRPC-Web,
streams, other methods) goes through connectrpc unchanged.

What is left out on purpose: the disconnect watch (a method here only hands a message to an actor
and waits for its answer, so it finishes anyway; the reply to a closed connection is dropped) and
response compression (optional in Connect; replies this small only grow under gzip).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

from foundry.kernel.edge.http.codecs import BinaryCodec, JsonCodec, size_error
from foundry.kernel.edge.http.errors import connect_error
from foundry.kernel.edge.http.internals import connect_error_body
from foundry.kernel.edge.http.routes import UnaryRoute

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FAST_PATHS = frozenset({"/foundry.Foundry/Emit"})
_CONTENT_TYPES = {"application/json": "json", "application/proto": "proto"}
_SKIP_IF_PRESENT = ("connect-timeout-ms", "content-encoding")  # connectrpc handles those


class UnaryFastPath:
    def __init__(
        self,
        routes: Mapping[str, UnaryRoute],
        codecs: Mapping[str, JsonCodec | BinaryCodec],
        max_message_bytes: int,
    ) -> None:
        self._routes = {path: routes[path] for path in FAST_PATHS if path in routes}
        self._codecs = {
            content_type: (content_type.encode(), codecs[name])
            for content_type, name in _CONTENT_TYPES.items()
        }
        self._limit = max_message_bytes

    def takes(self, path: str, headers: Mapping[str, str]) -> bool:
        """A unary Connect POST (already checked) this path answers as connectrpc would."""
        return (
            path in self._routes
            and headers.get("content-type") in self._codecs
            and headers.get("connect-protocol-version", "1") == "1"
            and not any(name in headers for name in _SKIP_IF_PRESENT)
        )

    async def __call__(
        self,
        path: str,
        headers: Mapping[str, str],
        receive: Receive,
        send: Send,
        traceparents: Sequence[str] = (),
    ) -> None:
        """``traceparents``: every ``traceparent`` header of the call (``headers`` holds the
        first of a name given twice)."""
        content_type, codec = self._codecs[headers["content-type"]]
        route = self._routes[path]
        try:
            body = await self._body(receive)
            if body is None:
                return  # the client is gone: nobody to answer
            reply = await route.call(codec.decode(body, route.input), traceparents)
            data = codec.encode(reply)
        except Exception as exc:  # the handler's errors are ConnectErrors already
            status, data = connect_error_body(connect_error(exc))
            await _respond(send, status, b"application/json", data)
            return
        await _respond(send, 200, content_type, data)

    async def _body(self, receive: Receive) -> bytes | None:
        """The request body, refused as soon as it is over the limit; None on a disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                raise size_error(size, self._limit, whole=False)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    """One-piece response with its length (no chunked framing: one write less per call)."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
