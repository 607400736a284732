"""The HTTP listener: hypercorn's trio worker (HTTP/1.1, h2c and, with TLS, h2 by ALPN) serving
:class:`~foundry.kernel.edge.http.app.HttpApp` inside the daemon's trio run.

The socket is bound by the daemon first (:func:`bind_http`), so a port in use fails the start in
one line. A stop is orderly, like the gRPC port's: :meth:`HttpServer.stop_accepting` closes the
listening socket and refuses new calls (503 ``unavailable``), :meth:`HttpServer.drain` waits for
the calls in flight, :meth:`HttpServer.close` cancels what is left.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio
from foundry.kernel.edge.connections import DEFAULT_MAX_CONNECTIONS, ConnectionCap
from foundry.kernel.edge.grpc.server import bind
from foundry.kernel.edge.h2_guard import limit_header_blocks
from foundry.kernel.edge.http.app import HttpApp
from foundry.kernel.edge.http.cors import OriginPolicy, own_origins
from foundry.kernel.edge.http.hypercorn_guard import (
    bound_http2_streams,
    bound_websocket_messages,
    cap_connections,
    contain_connection_errors,
    end_streams_before_goaway,
    ignore_data_of_closed_streams,
    limit_control_frames,
    release_streams_of_closed_connections,
    remember_fewer_closed_streams,
    watch_sends,
)
from foundry.kernel.edge.http.send_watch import SendWatch
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

log = logging.getLogger("foundry.http")

KEEP_ALIVE_SECONDS = 60  # browsers and HTTP/1.1 clients reuse a connection between calls
# hypercorn ends a connection after 1,000 requests by default, failing the calls in flight on an
# HTTP/2 one (a grpcio channel's live Watch): not in practice (h2's memory of closed streams,
# which the cap bounded, is bounded by ``hypercorn_guard.remember_fewer_closed_streams``)
KEEP_ALIVE_REQUESTS = 2**31 - 1
WEBSOCKET_MAX_MESSAGE = 64 * 1024  # clients send nothing the streams read


class _Config(HypercornConfig):
    """hypercorn's config with a TLS context made by the caller (``edge/security.py``)."""

    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._ssl_context = ssl_context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context


def bind_http(host: str, port: int) -> socket.socket:
    """The listening socket (OSError goes to the caller); hypercorn listens on it."""
    sock = bind(host, port)
    sock.setblocking(False)
    return sock


def token_check(token: str | None) -> Any:
    """The bearer-token check of ``edge/security.py`` for ``token``, or None (no token)."""
    if token is None:
        return None
    from foundry.kernel.edge.security import token_matches

    return lambda header: token_matches(header, token)


class HttpServer:
    def __init__(self, app: HttpApp, address: str) -> None:
        self.app, self.address = app, address
        self._shutdown = trio.Event()
        self._cancel = trio.CancelScope()
        self._done = trio.Event()

    def stop_accepting(self) -> None:
        """Close the listening socket; calls on open connections get 503 ``unavailable``."""
        self.app.accepting = False
        self._shutdown.set()

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the calls and streams in flight; returns how many
        are left."""
        with trio.move_on_after(grace):
            await self.app.idle.wait()
        return self.app.active

    async def close(self) -> None:
        """Cancel what still runs."""
        self.stop_accepting()
        self._cancel.cancel()
        await self._done.wait()

    async def run(self, config: HypercornConfig, sockets: Sockets) -> None:
        try:
            with self._cancel:
                await worker_serve(
                    wrap_app(self.app, 0, "asgi"),  # type: ignore[arg-type]
                    config,
                    sockets=sockets,
                    shutdown_trigger=self._shutdown.wait,
                )
        finally:
            self._done.set()


@asynccontextmanager
async def open_http_server(
    services: Iterable[Any],
    sock: socket.socket,
    *,
    max_message_bytes: int,
    cors_origins: tuple[str, ...],
    grace: float,
    body_timeout: float = 60.0,
    token: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncIterator[HttpServer]:
    """Serve ``services`` on ``sock`` until the block ends (then whatever runs is cancelled)."""
    contain_connection_errors()  # one connection's error ends it, not the listener
    ignore_data_of_closed_streams()  # a stream answered early: its late DATA ends nothing
    release_streams_of_closed_connections()  # an app answering a disconnect does not wait
    limit_control_frames()  # a connection flooding PING/SETTINGS/PRIORITY frames is closed
    limit_header_blocks()  # nor a header block HPACK would spend seconds on
    remember_fewer_closed_streams()  # h2's memory of a connection's closed streams, bounded
    bound_http2_streams()  # a stream's reply its client opens no flow-control window for
    bound_websocket_messages()  # a message past the size is not kept, nor inflated
    end_streams_before_goaway()  # in a stop, a stream's END_STREAM before the connection's GOAWAY
    bound = sock.getsockname()
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    own = own_origins(host, bound[1], secure=ssl_context is not None)
    app = HttpApp(
        services,
        max_message_bytes=max_message_bytes,
        origins=OriginPolicy(cors_origins, own),
        token_check=token_check(token),
        body_timeout=body_timeout,
    )
    server = HttpServer(app, f"{host}:{bound[1]}")
    config = _Config(ssl_context)
    config.graceful_timeout = grace
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    config.keep_alive_max_requests = KEEP_ALIVE_REQUESTS
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE
    config.accesslog = None
    config.include_server_header = False  # no version banner, and less to write per reply
    config.errorlog = log
    cap_connections(config, ConnectionCap(max_connections, "HTTP"))
    watch = SendWatch(body_timeout)  # replies to clients that read none of them
    watch_sends(config, watch)
    secure = ssl_context is not None
    sockets = Sockets(
        secure_sockets=[sock] if secure else [], insecure_sockets=[] if secure else [sock],
        quic_sockets=[],
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run, config, sockets)
        nursery.start_soon(watch.run)
        try:
            yield server
        finally:
            watch.closing()  # a client reading nothing cannot hold the stop up
            await server.close()
            nursery.cancel_scope.cancel()  # the watch: nothing is sent any more
