"""grpclib serving both services inside the trio process, through trio-asyncio.

Handlers live on the asyncio side and ask the trio actors through ``bridge.py`` (:func:`ask`).
Kernel errors become gRPC statuses here, in one table; anything unexpected becomes a generic
INTERNAL for the client and a logged traceback for the operator.

A stop drains (:class:`GrpcServer`): grpclib's ``Server.close`` cancels every request in flight
at once, so first the server stops listening, reports NOT_SERVING on the health service and
refuses new calls (UNAVAILABLE), then waits — up to the grace — for the calls in flight to finish,
and only then closes.

Beside the services: server reflection (``reflection.py``) and health (``health.py``); an unknown
method answers UNIMPLEMENTED (``internals.answer_unknown_methods``); with a token, every call but
a health check needs ``authorization: Bearer <token>`` (:func:`require_token`).

A connection's HTTP/2 frames go to its socket once per turn of the event loop
(``internals.coalesce_writes``), not once per send: a unary reply is three sends (headers, data,
trailers), and every reply finished in the same turn leaves in the same ``send``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import betterproto2
import trio
import trio_asyncio
from foundry.kernel import errors
from foundry.kernel.edge.connections import (
    DEFAULT_MAX_CONNECTIONS,
    ConnectionCap,
    capped_listener,
)
from foundry.kernel.edge.grpc import fastproto, upb_encode
from foundry.kernel.edge.grpc.bridge import ask_actor
from foundry.kernel.edge.grpc.framing import canonical, check_framing, not_valid
from foundry.kernel.edge.grpc.health import HEALTH_PATH_PREFIX, ServingHealth
from foundry.kernel.edge.grpc.internals import (
    Encoded,
    answer_expired_deadlines,
    answer_unknown_methods,
    bound_closed_streams,
    bound_unread_replies,
    can_write_now,
    coalesce_writes,
    forget_finished_tasks,
    install_message_limit,
    limit_control_frames,
    message_limit_error,
    read_hostile_headers,
    release_reset_streams,
    request_header_bytes,
    stop_listening,
)
from foundry.kernel.edge.grpc.message_check import WrongField, check_request
from foundry.kernel.edge.grpc.reflection import with_reflection
from foundry.kernel.edge.h2_guard import limit_header_blocks
from foundry.kernel.edge.security import sole_value, token_matches
from foundry.proto import foundry_api
from foundry.proto import runtime_api as api
from grpclib import GRPCError
from grpclib.config import Configuration
from grpclib.const import Cardinality, Handler, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import RecvRequest, listen
from grpclib.server import Server

log = logging.getLogger("foundry.grpc")

T = TypeVar("T")

STATUS_OF: dict[type[errors.FoundryError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.ResourceExhausted: Status.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: Status.DEADLINE_EXCEEDED,
}


def to_grpc_error(exc: BaseException) -> GRPCError:
    for kind in type(exc).__mro__:
        if kind in STATUS_OF:
            return GRPCError(STATUS_OF[kind], bounded_message(str(exc)))
    log.error("unexpected error in a request handler", exc_info=exc)
    return GRPCError(Status.INTERNAL, "internal error; the daemon log has the details")


async def ask(mailbox: trio.MemorySendChannel[Any], build: Callable[[Any], Any]) -> Any:
    """Ask an actor from a handler (see ``bridge.py``); kernel errors become gRPC statuses."""
    try:
        return await ask_actor(mailbox, build)
    except GRPCError:
        raise
    except Exception as exc:
        raise to_grpc_error(exc) from None


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket; OSError (address in use, bad host) goes to the caller."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


# Requests too big for betterproto2's pure-Python parse (``fastproto``), or on the hot path,
# decoded by upb; replies on the hot path encoded by it.
FAST_DECODERS: dict[type, Callable[[bytes], Any]] = {
    api.CheckChangeGateRequest: fastproto.decode_request,
    foundry_api.EmitRequest: fastproto.decode_emit_request,
}
# Decoded on the loop whatever their size: upb alone, in C. (CheckChangeGate's Structs are parsed
# by betterproto2 after upb: a 3.6 MB one held the loop 14 s.)
DECODED_ON_LOOP = frozenset({foundry_api.EmitRequest})
FAST_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    foundry_api.EmitResponse: fastproto.encode_emit_response,
}


# A request message betterproto2 parses, from this size on: ~5 µs a byte at worst (a packed
# repeated field: 240 KB held both ports 1 s), ~80 ms here.
DECODE_OFF_LOOP_BYTES = 16 * 1024


class RequestCodec(ProtoCodec):
    """Protobuf, checked: a request that does not parse (say, invalid UTF-8 in a string, or bytes
    cut short: ``framing.py``) or whose fields have the wrong wire type is the client's error,
    INVALID_ARGUMENT naming the field (the request, for bytes that are no message at all) —
    grpclib would answer UNKNOWN, and betterproto2 would hand the kernel an ``int`` for a string.
    A request over ``max_message_bytes`` is refused (``internals.install_message_limit`` refuses
    it before reading it; this is the check if that could not be installed). A reply already
    serialized (``internals.Encoded``) goes out as it is. Requests and replies listed in
    :data:`FAST_DECODERS` and :data:`FAST_ENCODERS` go through upb, with the same result."""

    def __init__(self, max_message_bytes: int) -> None:
        self._limit = max_message_bytes

    def decodes_off_loop(self, message_type: Any, length: int) -> bool:
        """Whether a request message is decoded on a worker thread: a large one betterproto2
        parses (pure Python: 400,000 map entries held the loop 6 s), not one upb alone decodes
        (an Emit of 500 KB: a thread's allocations stayed with its arena, ~20 MB more RSS)."""
        return length >= DECODE_OFF_LOOP_BYTES and message_type not in DECODED_ON_LOOP

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, Encoded):
            return message.data
        fast = FAST_ENCODERS.get(type(message))
        if fast is not None:
            return fast(message)
        if isinstance(message, betterproto2.Message):
            return upb_encode.encode(message)
        data: bytes = super().encode(message, message_type)  # health's, reflection's (upb)
        return data

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self._limit:
            raise message_limit_error(len(data), self._limit)
        try:
            fast = FAST_DECODERS.get(message_type)
            if fast is not None:
                try:
                    message = fast(data)
                except WrongField:
                    raise  # named already (its fallback is the slow road's ``canonical``)
                except Exception:
                    check_framing(data, message_type)  # bytes that are no message: said so
                    raise
                if isinstance(message, betterproto2.Message):
                    # (upb's fallback: betterproto2 parsed the canonical bytes, framing checked)
                    check_request(message)
            elif isinstance(message_type, type) and issubclass(message_type, betterproto2.Message):
                message = super().decode(canonical(data, message_type), message_type)
                check_request(message)
            else:  # health's, reflection's (upb)
                message = super().decode(data, message_type)
        except WrongField as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, f"request: {exc}") from None
        except Exception as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, not_valid(data, message_type, exc)) from None
        return message


class Calls:
    """The calls in flight (grpclib's task for each), and whether new ones are taken.

    Finished tasks are dropped when the set has doubled since the last sweep, not by a done
    callback each: that would be one more asyncio callback per call."""

    def __init__(self) -> None:
        self.accepting = True
        self.cut_short = False  # the stop's grace ended: what still runs is cancelled
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweep_at = 64

    def enter(self) -> None:
        if not self.accepting:
            raise GRPCError(Status.UNAVAILABLE, "the daemon is shutting down")
        task = asyncio.current_task()
        if task is None:
            return
        tasks = self._tasks
        tasks.add(task)
        if len(tasks) >= self._sweep_at:
            self._tasks = tasks = {t for t in tasks if not t.done()}
            self._sweep_at = max(64, 2 * len(tasks))

    def __len__(self) -> int:
        return sum(not t.done() for t in self._tasks)

    async def finished(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the calls in flight to end (trailers sent);
        returns how many are still running."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        return len(pending)


class GuardedService:
    """A service whose every handler maps escaping errors through :func:`to_grpc_error`: kernel
    errors become their status, anything else a generic INTERNAL and one logged traceback. Its
    calls are counted in ``calls`` (refused while the server drains)."""

    def __init__(self, service: Any, calls: Calls) -> None:
        self._service = service
        self._calls = calls

    def __mapping__(self) -> dict[str, Handler]:
        return {
            path: Handler(
                _guard(h.func, self._calls, h.cardinality in UNARY_REQUESTS),
                h.cardinality,
                h.request_type,
                h.reply_type,
            )
            for path, h in self._service.__mapping__().items()
        }


UNARY_REQUESTS = (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM)


def served_by(
    mapping: dict[str, Handler], path: str, serve: Callable[[Any], Awaitable[None]]
) -> dict[str, Handler]:
    """``mapping`` with the method ``path`` served by ``serve`` (a route of the service's own
    in place of the generated one; cardinality and message types kept)."""
    generated = mapping[path]
    mapping[path] = Handler(serve, generated.cardinality, generated.request_type,
                            generated.reply_type)  # fmt: skip
    return mapping


STOPPED_BEFORE_ANSWERING = (
    "the daemon stopped before answering: the call ran past its shutdown grace; call again "
    "once it is back"
)


def _guard(
    func: Callable[[Any], Awaitable[None]], calls: Calls, unary_request: bool
) -> Callable[[Any], Awaitable[None]]:
    async def guarded(stream: Any) -> None:
        calls.enter()
        if unary_request:
            stream.recv_message = _one_request(stream.recv_message)
        try:
            await func(stream)
        except asyncio.CancelledError:
            if not calls.cut_short or not can_write_now(stream):
                # its client went (a deadline, a reset: nobody to tell), or reads nothing (the
                # trailers would wait for it, and the stop with them)
                raise
            # The stop's grace ended before it did (``GrpcServer.close``): said in its
            # trailers, as a stream cut by the stop is, not a connection lost without a word.
            raise GRPCError(Status.UNAVAILABLE, STOPPED_BEFORE_ANSWERING) from None
        except GRPCError as exc:
            raise GRPCError(exc.status, bounded_message(exc.message), exc.details) from None
        except Exception as exc:
            raise to_grpc_error(exc) from None

    return guarded


def _one_request(receive: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    """A unary call's ``recv_message``: its one message, once the client has ended its side
    (grpc-java waits for that too). Without one, the generated handler asserted (INTERNAL, and
    a traceback); a second message, or bytes after the first, were ignored, the first acted on.
    Refused as the HTTP port's connectrpc refuses them, in its words."""

    async def the_request() -> Any:
        message = await receive()
        if message is None:
            raise GRPCError(Status.UNIMPLEMENTED, "unary request has zero messages")
        if await receive() is not None:
            raise GRPCError(Status.UNIMPLEMENTED, "unary request has multiple messages")
        return message

    return the_request


MAX_ERROR_MESSAGE = 400


def bounded_message(message: str | None) -> str | None:
    """Error text that stays small in an HTTP/2 trailer, whatever a caller sent."""
    if message is None or len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[: MAX_ERROR_MESSAGE - 3] + "..."


class GrpcServer:
    """The grpclib server with an orderly stop: :meth:`stop_accepting`, :meth:`drain`,
    :meth:`close` (trio side)."""

    def __init__(self, server: Server, calls: Calls, health: ServingHealth) -> None:
        self.server, self.calls, self.health = server, calls, health

    def stop_accepting(self) -> None:
        """Close the listening socket and report NOT_SERVING; calls that arrive on open
        connections get UNAVAILABLE."""
        self.calls.accepting = False
        self.health.not_serving()
        stop_listening(self.server)

    async def drain(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the calls in flight; returns how many are left."""
        left: int = await trio_asyncio.aio_as_trio(self.calls.finished)(grace)
        return left

    async def close(self) -> None:
        """Cancel what still runs and close (grpclib's ``close`` and ``wait_closed``)."""
        self.calls.accepting = False
        self.calls.cut_short = True
        self.server.close()
        await trio_asyncio.aio_as_trio(self.server.wait_closed)()


MAX_METADATA_BYTES = 64 * 1024  # a call's metadata, as HTTP/2 counts it (32 bytes a field)


async def refuse_large_metadata(event: RecvRequest) -> None:
    """RESOURCE_EXHAUSTED for a call whose metadata passes ``MAX_METADATA_BYTES`` — that call
    alone: h2 refused such a header list by closing the connection, its other calls too (a
    Watch beside a Status with one 70 KB value)."""
    size = request_header_bytes() or sum(len(k) + len(v) + 32 for k, v in event.metadata.items())
    if size > MAX_METADATA_BYTES:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, f"request metadata: {size:,} bytes, over "
                        f"the {MAX_METADATA_BYTES:,}-byte limit")  # fmt: skip


def require_token(token: str) -> Callable[[RecvRequest], Coroutine[Any, Any, None]]:
    """A ``RecvRequest`` listener refusing (UNAUTHENTICATED) a call without ``authorization:
    Bearer <token>``, before its handler runs; health checks stay open for probes."""

    async def check(event: RecvRequest) -> None:
        if event.method_name.startswith(HEALTH_PATH_PREFIX):
            return
        values = [v for v in event.metadata.getall("authorization", ()) if isinstance(v, str)]
        if not token_matches(sole_value(values), token):
            problem = ("is missing" if not values else "is sent more than once" if len(values) > 1
                       else "does not match")  # fmt: skip
            raise GRPCError(
                Status.UNAUTHENTICATED, f"the bearer token {problem} (authorization metadata)"
            )

    return check


IDLE_PROBE_SECONDS = 60.0  # an HTTP/2 PING to every connection this often, calls or none
PROBE_ANSWER_SECONDS = 20.0  # a connection whose peer does not answer it is closed


def probing_idle_connections(
    every: float = IDLE_PROBE_SECONDS, answer_within: float = PROBE_ANSWER_SECONDS
) -> Configuration:
    """grpclib's keepalive, for idle connections too: each connection is sent an HTTP/2 PING
    ``every`` seconds, and closed if its peer does not answer within ``answer_within`` — a
    socket that never speaks HTTP/2 (a port scan, a stalled client) no longer holds a place of
    ``[daemon] max_connections`` for good. Every HTTP/2 client answers PINGs by itself. (By
    default grpclib pings only connections with calls open, every two hours.)"""
    return Configuration(
        _keepalive_time=every,
        _keepalive_timeout=answer_within,
        _keepalive_permit_without_calls=True,
        _http2_max_pings_without_data=0,  # no limit: an idle connection stays probed
        _http2_min_sent_ping_interval_without_data=every / 2,
    )


async def start_server(
    handlers: Sequence[Any],
    sock: socket.socket,
    *,
    max_message_bytes: int,
    ssl_context: ssl.SSLContext | None = None,
    token: str | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    body_timeout: float | None = None,
) -> GrpcServer:
    install_message_limit(max_message_bytes, body_timeout)
    bound_closed_streams()  # h2 remembers 65,536 per connection (~9.5 MB) by default
    coalesce_writes()  # one socket write per loop turn, not three per unary reply
    answer_expired_deadlines()  # DEADLINE_EXCEEDED, not UNKNOWN and a traceback
    read_hostile_headers()  # bad -bin metadata: no hung call; a bad grpc-timeout: not UNKNOWN
    release_reset_streams()  # a stream reset before its task ran is not kept
    forget_finished_tasks()  # nor a closed connection's tasks, with their streams' bodies
    limit_control_frames()  # a connection flooding PING/SETTINGS/PRIORITY frames is closed
    limit_header_blocks()  # nor a header block HPACK would spend seconds on
    if body_timeout is not None:  # a reply no byte of which is read is given up on
        bound_unread_replies(body_timeout)
    calls = Calls()
    guarded = [GuardedService(h, calls) for h in handlers]
    health = ServingHealth(guarded)
    server = Server(
        with_reflection([*guarded, health.service]),
        codec=RequestCodec(max_message_bytes),
        config=probing_idle_connections(),
    )
    answer_unknown_methods(server)
    listen(server, RecvRequest, refuse_large_metadata)
    if token is not None:
        listen(server, RecvRequest, require_token(token))
    listener = capped_listener(sock, ConnectionCap(max_connections, "gRPC"))
    await trio_asyncio.aio_as_trio(server.start)(sock=listener, ssl=ssl_context)
    return GrpcServer(server, calls, health)
