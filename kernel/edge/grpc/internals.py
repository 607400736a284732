"""Every use of a private grpclib / trio-asyncio attribute, in one place, each behind a small
named function with a fallback to the public path.

What is touched, and why (``pyproject.toml`` pins the versions this was written against;
``tests/kernel/test_grpc_internals.py`` is the canary that fails, naming the library and what
disappeared, if an upgrade moves any of it):

- ``grpclib.server.recv_message`` (:func:`install_message_limit`): grpclib 0.4 has no public
  maximum for a received message — it reads whatever length a prefix announces. We replace the
  function ``grpclib.server`` imported with one that refuses an oversized message from its 5-byte
  prefix, before its body is read (HTTP/2 flow control then keeps the peer from sending more than
  one stream window). Fallback: the codec refuses it after reading (``server.RequestCodec``).
- ``grpclib.server.Stream._stream.send_data`` (:func:`send_frames`): many already-encoded
  messages in one HTTP/2 write — what grpclib's own ``send_message`` calls, once per message —
  then what ``send_message`` records of them (``_send_message_done``: a unary reply's end checks
  it). Fallback: ``Stream.send_message`` per message (the codec passes :class:`Encoded` through).
- ``trio_asyncio._base.BaseTrioEventLoop._main_loop_one`` (:func:`batch_ready_callbacks`):
  trio-asyncio runs one asyncio callback per trio scheduler pass; grpclib handles a request in
  dozens of callbacks. We run the callbacks already queued, up to a batch, before yielding to
  trio again. Fallback: no batching (slower, same behaviour).
- ``grpclib.protocol.H2Connection`` and h2's ``H2Connection.MAX_CLOSED_STREAMS``
  (:func:`bound_closed_streams`): h2 remembers 65,536 closed streams per connection (~9.5 MB);
  grpclib's connections get a subclass that remembers 4,096. Fallback: h2's default.
- ``BaseTrioEventLoop._timers`` / ``_timer_handle_cancelled`` (:func:`drop_cancelled_timers`):
  trio-asyncio keeps a cancelled timer (one per call with a deadline) until it is due; we drop
  them once they are half its heap, as asyncio does. Fallback: they stay until due.
- ``grpclib.server.Server._server`` (:func:`stop_listening`): the asyncio server, to close the
  listening socket while in-flight RPCs drain (``Server.close`` also cancels them). Fallback:
  keep listening; the services refuse new calls with UNAVAILABLE while draining anyway.
- ``grpclib.server.H2Protocol`` (:func:`coalesce_writes`): grpclib writes to the socket once per
  HTTP/2 send — headers, data and trailers of a unary reply are three ``send`` syscalls, each with
  its GIL release and re-take. The servers' protocol gets a transport that gathers a connection's
  writes and hands them to the socket once per turn of the event loop (:class:`CoalescedWrites`):
  one ``send`` for every reply finished in that turn. Fallback: one write per send.
- ``grpclib.server.Server._mapping`` (:func:`answer_unknown_methods`): grpclib answers a path it
  has no handler for with a bare ``grpc-status: 12`` and no ``content-type``, which grpcio, Go
  and Connect clients report as "missing content-type" instead of UNIMPLEMENTED. We give the
  server a mapping whose ``get`` returns, for an unknown path, a handler that raises
  UNIMPLEMENTED: the answer then goes through grpclib's normal trailers-only response, with its
  ``content-type`` (and through the auth check first). Fallback: grpclib's bare answer.
- ``grpclib.server.DeadlineWrapper`` (:func:`answer_expired_deadlines`): a request whose deadline
  has already passed when its handling starts (``grpc-timeout: 0n``, ``1n``, or a deadline spent
  in transit) makes ``DeadlineWrapper.start`` raise a ``TimeoutError`` as it is entered, before
  the wrapper is marked cancelled, so grpclib logs it with a traceback as an unexpected "Timeout
  occurred" and answers UNKNOWN. The server module gets a subclass whose ``start`` marks it
  cancelled when that entry raises: grpclib's own branch for a deadline then answers
  DEADLINE_EXCEEDED, logged at INFO. Fallback: UNKNOWN, and a traceback per such request.
- ``grpclib.server.decode_metadata`` and ``_abort`` (:func:`read_hostile_headers`): a ``-bin``
  metadata value that is not base64 raised in ``request_handler`` before any answer (the call
  hung, its stream was never released, a traceback logged), and a malformed ``grpc-timeout`` was
  UNKNOWN. The module gets a decode that leaves such values out, and an abort that answers the
  timeout INVALID_ARGUMENT. Fallback: the hang, and UNKNOWN.
- ``grpclib.server.Handler.accept`` / ``cancel`` (:func:`release_reset_streams`): a stream the
  client resets (RST_STREAM) right after its request is cancelled before its task starts, so
  ``request_handler``'s ``finally: release_stream()`` never runs and the connection keeps the
  stream (~7 KB) for as long as it lives: one client resetting streams in a loop grew the daemon
  by ~6 MB a second. ``accept`` hands the handler a release that runs once, and ``cancel`` has
  it run when the cancelled task is done. Fallback: the leak.
- ``grpclib.server.Handler.close`` / ``cancel``, ``_tasks`` and ``_cancelled``
  (:func:`forget_finished_tasks`): a closed connection's handler kept its requests' tasks, and
  through their frames each stream's buffered body, for good. The handler now drops its tasks
  at close and each cancelled task once it is done, and what each stream buffered of its body
  (``protocol.Buffer._acked`` / ``_unacked``) at close. Fallback: the leak.
- ``grpclib.protocol.Connection.feed`` (:func:`limit_control_frames`): the events h2 makes of a
  connection's bytes, counted for its control frames; a flood raises h2's ``ProtocolError``,
  which ``H2Protocol.data_received`` answers by closing the connection. Frames of a type h2 does
  not know are left out (grpclib raised on them). Fallback: served.
- ``grpclib.protocol.Stream.send_data`` and its ``data_sent`` (:func:`bound_unread_replies`):
  grpclib waits for the client's flow-control window for as long as the connection lives,
  holding the reply: a client that never opens it (and answers PINGs) held ~6 MB a 100-byte
  query. A send larger than the window that moves no byte (nor its connection) for
  ``[daemon] body_timeout`` is given up on, and while stalled ones pass a budget (a connection's,
  and in all) a send that must wait is refused. Fallback: they are held.

Nothing else under ``kernel/edge`` reads a private attribute of grpclib, h2 or trio-asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import heapq
import logging
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpclib
import grpclib.const
import grpclib.metadata
import grpclib.protocol
import grpclib.server
import grpclib.stream
import h2.exceptions
import trio
from foundry.kernel.edge.connections import (
    FloodWarnings,
    flooded,
)
from foundry.kernel.edge.grpc.bridge import in_worker_thread
from grpclib import GRPCError
from grpclib.const import Cardinality, Handler, Status
from h2.errors import ErrorCodes
from h2.events import RequestReceived, UnknownFrameReceived

log = logging.getLogger("foundry.grpc")

ORIGINAL_RECV_MESSAGE = grpclib.stream.recv_message

_warned: set[str] = set()


def _fallback(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("grpc internals: %s; using the public path (see internals.py)", what)


# The request's grpc-encoding, read with its headers (``read_hostile_headers``' decode, in the
# call's own task) for its messages: grpclib reads none (a grpcio channel made with
# ``compression=gzip`` compresses larger messages only, and those were UNIMPLEMENTED).
_ENCODING: contextvars.ContextVar[str] = contextvars.ContextVar("grpc_encoding", default="")
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
# And the size of its header list as HTTP/2 counts it (a -bin value as sent: base64).
_HEADER_BYTES: contextvars.ContextVar[int] = contextvars.ContextVar("header_bytes", default=0)


def request_header_bytes() -> int:
    """The current call's header list as HTTP/2 counts it (32 bytes a field more than its name
    and value); 0 where the headers were not read here (grpclib changed)."""
    return _HEADER_BYTES.get()


def _inflater(flags: int) -> Any:
    """None for an uncompressed message; a decompressor for one the call's ``grpc-encoding``
    names (gzip, deflate); UNIMPLEMENTED for any other."""
    if not flags:
        return None
    wbits = _WBITS.get(_ENCODING.get())
    if wbits is None:
        raise GRPCError(Status.UNIMPLEMENTED, "compressed requests are not supported but as "
                        "grpc-encoding gzip or deflate")  # fmt: skip
    return zlib.decompressobj(wbits)


def _inflated(inflate: Any, data: bytes, limit: int) -> bytes:
    """``data`` inflated, at most ``limit`` bytes of it (a bomb is not made whole first)."""
    try:
        out: bytes = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise GRPCError(Status.INVALID_ARGUMENT, f"request: the message does not inflate "
                        f"({_ENCODING.get()}: {exc})") from None  # fmt: skip
    if len(out) > limit:
        raise GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"request: more than {limit} bytes inflated, over the message limit "
            "([daemon] max_message_bytes)",
        )
    if not inflate.eof or inflate.unused_data:
        raise GRPCError(Status.INVALID_ARGUMENT, "request: the compressed message is not whole")
    return out


def message_limit_error(length: int, limit: int) -> GRPCError:
    return GRPCError(
        Status.RESOURCE_EXHAUSTED,
        f"request: {length} bytes is over the {limit}-byte message limit "
        "([daemon] max_message_bytes)",
    )


# --- the received-message limit -----------------------------------------------------------------


def recv_message_is_replaceable() -> str | None:
    """None, or what changed so that replacing ``grpclib.server.recv_message`` would not work."""
    if getattr(grpclib.server, "recv_message", None) is None:
        return "grpclib.server no longer imports recv_message"
    try:
        import inspect

        source = inspect.getsource(grpclib.server.Stream.recv_message)
    except (OSError, TypeError, AttributeError):
        return "grpclib.server.Stream.recv_message cannot be read"
    if "recv_message(self._stream" not in source:
        return "grpclib.server.Stream.recv_message no longer calls the module's recv_message"
    return None


async def _received(stream: Any, size: int) -> bytes:
    """``size`` bytes of the request stream: grpclib asserts (an AssertionError, answered
    INTERNAL) when the stream ends first — a client's length prefix larger than what it sent."""
    try:
        data: bytes = await stream.recv_data(size)
    except AssertionError:
        raise GRPCError(Status.INVALID_ARGUMENT, "request: the message was cut short") from None
    return data


def install_message_limit(limit: int, body_timeout: float | None = None) -> bool:
    """Refuse (RESOURCE_EXHAUSTED) any received message longer than ``limit`` bytes from its
    prefix, and (DEADLINE_EXCEEDED) one that takes more than ``body_timeout`` seconds to arrive:
    a client answering PINGs held its stream, and up to a message's bytes, for good while it
    trickled the body or stopped sending. False: grpclib changed, and only the codec's check
    (after the read) applies."""
    reason = recv_message_is_replaceable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__})")
        return False

    async def message(stream: Any, codec: Any, message_type: Any) -> Any:
        prefix = await _received(stream, 5)
        if not prefix:
            return None
        inflate = _inflater(prefix[0])
        length = int.from_bytes(prefix[1:5], "big")
        if length > limit:
            raise message_limit_error(length, limit)
        data = await _received(stream, length)
        if len(data) != length:
            raise GRPCError(Status.INVALID_ARGUMENT, "request: the message was cut short")
        if inflate is not None:
            data = _inflated(inflate, data, limit)
        off_loop = getattr(codec, "decodes_off_loop", None)
        if off_loop is None or not off_loop(message_type, len(data)):  # inflated, if it was
            return codec.decode(data, message_type)
        # (server.RequestCodec says which: large, slow ones)
        return await in_worker_thread(codec.decode, data, message_type, heavy=True)

    async def recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
        task = asyncio.current_task()
        if body_timeout is None or task is None:
            return await message(stream, codec, message_type)
        _RECEIVING[task] = time.monotonic()
        _watch_receiving(body_timeout)
        try:
            return await message(stream, codec, message_type)
        except asyncio.CancelledError:
            if task not in _EXPIRED:
                raise
            task.uncancel()
            raise GRPCError(
                Status.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {body_timeout:g} s "
                "([daemon] body_timeout)",
            ) from None
        finally:
            _RECEIVING.pop(task, None)
            _EXPIRED.discard(task)

    grpclib.server.recv_message = recv_message  # type: ignore[attr-defined]  # not re-exported
    return True


# The requests whose message is being received (their task, since when), and those cancelled for
# taking longer than the body timeout. One watcher task looks at them a few times a second while
# any is: a timer a request (``asyncio.timeout``) cost ~10% of Emit's throughput under
# trio-asyncio.
_RECEIVING: dict[Any, float] = {}
_EXPIRED: set[Any] = set()
_WATCHER: list[Any] = []  # the watcher task, while it runs


def _watch_receiving(body_timeout: float) -> None:
    if not _WATCHER:
        _WATCHER.append(asyncio.get_running_loop().create_task(_expire(body_timeout)))


async def _expire(body_timeout: float) -> None:
    """Cancel each request still receiving its message ``body_timeout`` seconds after it
    began; end once none is receiving."""
    every = min(1.0, body_timeout / 4)
    try:
        while _RECEIVING:
            await asyncio.sleep(every)
            now = time.monotonic()
            for task, began in list(_RECEIVING.items()):
                if now - began >= body_timeout and task not in _EXPIRED:
                    _EXPIRED.add(task)
                    task.cancel()
    finally:
        _WATCHER.clear()


# --- replies a client does not read ---------------------------------------------------------------

REPLY_BUDGET = 256 * 1024 * 1024  # bytes of stalled replies, in all, before more are refused
CONNECTION_REPLY_BUDGET = 16 * 1024 * 1024  # and on one connection
STALLED_AFTER = 5.0  # seconds without a byte read that make a reply stalled (at most)


def reply_sends_are_boundable() -> str | None:
    """None, or what changed so that :func:`bound_unread_replies` would not work."""
    stream = getattr(grpclib.protocol, "Stream", None)
    if stream is None or not callable(getattr(stream, "send_data", None)):
        return "grpclib.protocol.Stream.send_data is gone"
    try:
        import inspect

        source = inspect.getsource(stream.send_data)
    except (OSError, TypeError):
        return "grpclib.protocol.Stream.send_data cannot be read"
    needed = ("self.window_updated.wait()", "self.data_sent +=", "self.connection.data_sent +=",
              "local_flow_control_window")  # fmt: skip
    if not all(part in source for part in needed):
        return "grpclib.protocol.Stream.send_data no longer waits on window_updated"
    return None


def bound_unread_replies(stall_timeout: float) -> bool:
    """A send that must wait for its client's flow-control window (the reply is larger than
    what the client lets the daemon send) and moves no byte for ``stall_timeout`` seconds is
    given up on (DEADLINE_EXCEEDED): a client that set its window to 0 and answered the
    daemon's PINGs held every reply it asked for — 100 queries of 100 bytes held ~590 MB. A
    reply moves when a byte of it, or of its connection, is sent (the window is shared: one
    large reply takes it all, and the calls beside it wait their turn). One that moved no
    byte for ``STALLED_AFTER`` seconds (or half the timeout) is stalled; while a connection's
    stalled replies pass ``CONNECTION_REPLY_BUDGET`` bytes left to send, or all of them
    ``REPLY_BUDGET``, a reply that must wait is refused (RESOURCE_EXHAUSTED): on a connection
    its client reads, only while others hold that much. Idempotent (the first call's timeout
    stays). False: grpclib changed, and unread replies are held as long as the
    connection."""
    protocol_stream = grpclib.protocol.Stream
    if getattr(protocol_stream, "_foundry_bounded", False):
        return True
    reason = reply_sends_are_boundable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): unread replies are kept")
        return False
    original = protocol_stream.send_data

    async def send_data(self: Any, data: bytes, end_stream: bool = False) -> None:
        size = len(data)
        task = asyncio.current_task()
        # (what fits the window goes at once: the common case costs one look at it)
        if task is None or size <= self._h2_connection.local_flow_control_window(self.id):
            return await original(self, data, end_stream)
        connection = self.connection
        if task not in _PREFIXED:  # (a message whose prefix went out is sent, or given up)
            refuse_when_over_budget(connection)
        watched = _Watched(self, connection, size, time.monotonic())
        _SENDING[task] = watched
        _watch_sending(stall_timeout)
        try:
            return await original(self, data, end_stream)
        except asyncio.CancelledError:
            if task not in _STALLED:
                raise
            if task.uncancel() > 0:  # cancelled for another reason too: that one stands
                raise
            raise GRPCError(Status.DEADLINE_EXCEEDED, f"the client read none of the reply for "
                            f"{stall_timeout:g} s ([daemon] body_timeout)") from None  # fmt: skip
        finally:
            _SENDING.pop(task, None)
            _STALLED.discard(task)
            watched.moved()

    protocol_stream.send_data = functools.wraps(original)(send_data)  # type: ignore[method-assign]
    protocol_stream._foundry_bounded = True  # type: ignore[attr-defined]
    return True


def refuse_when_over_budget(connection: Any) -> None:
    """RESOURCE_EXHAUSTED for a reply that must wait for its client while the stalled ones pass
    their budgets (:func:`bound_unread_replies`)."""
    if _HELD.get(connection, 0) > CONNECTION_REPLY_BUDGET or _STALLED_BYTES[0] > REPLY_BUDGET:
        raise GRPCError(Status.RESOURCE_EXHAUSTED, "too many replies wait for clients that read "
                        "none of them; try again")  # fmt: skip


class _Watched:
    """A send waiting for its client: when it (or its connection: the window is the
    connection's too, and grpclib wakes the oldest stream first) last moved, and what it counts
    as stalled."""

    __slots__ = ("stream", "connection", "size", "began", "since", "sent", "shared", "stalled")

    def __init__(self, stream: Any, connection: Any, size: int, now: float) -> None:
        self.stream, self.connection, self.size, self.since = stream, connection, size, now
        self.began = self.sent = stream.data_sent
        self.shared = getattr(connection, "data_sent", 0)
        self.stalled = 0  # bytes it counts as stalled (what it had left to send then)

    def look(self, now: float) -> float:
        """Seconds since it last moved: a byte of it was sent, or of its connection while its
        own window is open (it waits its turn for the connection's). A stream whose own window
        stays 0 is one its client does not read, whatever it reads of the others."""
        sent, shared = self.stream.data_sent, getattr(self.connection, "data_sent", 0)
        if sent != self.sent or (shared != self.shared and self._own_window() > 0):
            self.since, self.sent = now, sent
            self.moved()
        self.shared = shared
        return now - self.since

    def _own_window(self) -> int:
        """The stream's own flow-control window (h2's), 0 when it cannot be read."""
        try:
            h2_stream = self.stream._h2_connection.streams[self.stream.id]
            return int(h2_stream.outbound_flow_control_window)
        except (AttributeError, KeyError, TypeError, ValueError):
            return 0

    def mark_stalled(self) -> None:
        if not self.stalled:
            self.stalled = max(self.size - (self.sent - self.began), 1)
            _STALLED_BYTES[0] += self.stalled
            _HELD[self.connection] = _HELD.get(self.connection, 0) + self.stalled

    def moved(self) -> None:
        """It moved (or ended): it no longer counts as stalled."""
        if self.stalled:
            _STALLED_BYTES[0] -= self.stalled
            left = _HELD.get(self.connection, self.stalled) - self.stalled
            if left > 0:
                _HELD[self.connection] = left
            else:
                _HELD.pop(self.connection, None)
            self.stalled = 0


# Sends being watched (by task), the ones cancelled for making no progress, the bytes of the
# stalled ones in all and by connection. One watcher task, as for requests (``_expire``).
_SENDING: dict[Any, _Watched] = {}
_STALLED: set[Any] = set()
_STALLED_BYTES = [0]
_HELD: dict[Any, int] = {}
_SEND_WATCHER: list[Any] = []


def _watch_sending(stall_timeout: float) -> None:
    if not _SEND_WATCHER:
        _SEND_WATCHER.append(asyncio.get_running_loop().create_task(_stall(stall_timeout)))


async def _stall(stall_timeout: float) -> None:
    """Look at the watched sends a few times a second: one that moved starts its clock again;
    one that has not moved for a while is stalled, and past ``stall_timeout`` cancelled. Ends
    once none is watched."""
    every = min(1.0, stall_timeout / 4)
    stalled_after = min(STALLED_AFTER, stall_timeout / 2)
    try:
        while _SENDING:
            await asyncio.sleep(every)
            now = time.monotonic()
            for task, watched in list(_SENDING.items()):
                still = watched.look(now)  # (a move starts its clock again)
                if still >= stall_timeout and task not in _STALLED:
                    _STALLED.add(task)
                    task.cancel()
                elif still >= stalled_after:
                    watched.mark_stalled()
    finally:
        _SEND_WATCHER.clear()


# --- many encoded messages in one write ----------------------------------------------------------


class Encoded:
    """A message already serialized: ``server.RequestCodec.encode`` passes it through as is."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def varint(value: int) -> bytes:
    """A protobuf varint (a length, or a tag), for a field written around bytes encoded already."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


UNCOPIED_BYTES = 65_536  # a message this large goes out without a copy of it behind its prefix


def grpc_messages(messages: Sequence[bytes]) -> bytes:
    """Serialized messages as gRPC length-prefixed messages (uncompressed), back to back."""
    return b"".join(b"\x00" + len(m).to_bytes(4, "big") + m for m in messages)


def raw_send_data(stream: grpclib.server.Stream[Any, Any]) -> Callable[..., Any] | None:
    """The HTTP/2 stream's ``send_data`` under a grpclib server stream, or None."""
    h2_stream = getattr(stream, "_stream", None)
    send_data = getattr(h2_stream, "send_data", None)
    return send_data if callable(send_data) else None


async def send_frames(stream: grpclib.server.Stream[Any, Any], messages: Sequence[bytes]) -> None:
    """Send serialized messages of the stream's reply type, the small ones gathered into HTTP/2
    DATA writes of about ``UNCOPIED_BYTES`` (initial metadata must have been sent). A large one
    goes out apart, behind its prefix: its bytes are shared by every reader of it (an event's
    watchers, a run history's tappers), where a batch joined them into a copy for each — 50
    tappers reading nothing of a run of 2 MB outputs held 2 GB. Fallback: ``send_message`` per
    message."""
    if not messages:
        return
    send_data = raw_send_data(stream)
    if send_data is None:
        _fallback(f"grpclib {grpclib.__version__}: Stream._stream.send_data is gone")
        for message in messages:
            await stream.send_message(Encoded(message))
        return
    small: list[bytes] = []
    gathered = 0
    for message in messages:
        if len(message) < UNCOPIED_BYTES:
            small.append(message)
            gathered += len(message)
            if gathered >= UNCOPIED_BYTES:  # a stalled reader holds one such copy, not a batch's
                await send_data(grpc_messages(small))
                small, gathered = [], 0
            continue
        if small:
            await send_data(grpc_messages(small))
            small, gathered = [], 0
        # A refusal comes before the prefix goes out (a prefix alone broke the stream); once
        # it is out, the message is sent, or given up with the stream (body_timeout).
        _refuse_a_wait_over_budget(send_data, 5 + len(message))
        await send_data(b"\x00" + len(message).to_bytes(4, "big"))
        task = asyncio.current_task()
        _PREFIXED.add(task)
        try:
            await send_data(message)
        finally:
            _PREFIXED.discard(task)
    if small:
        await send_data(grpc_messages(small))
    _count_sent(stream, len(messages))


def _count_sent(stream: grpclib.server.Stream[Any, Any], count: int) -> None:
    """Record the messages as grpclib's ``send_message`` records its own: a unary reply's end
    checks ``_send_message_done`` (else it answers UNKNOWN, "requires a single message")."""
    stream._send_message_done = True
    stream._messages_sent = getattr(stream, "_messages_sent", 0) + count
    connection = getattr(getattr(stream, "_stream", None), "connection", None)
    if connection is not None and hasattr(connection, "messages_sent"):
        connection.messages_sent += count
        connection.last_message_sent = time.monotonic()


_PREFIXED: set[asyncio.Task[Any] | None] = set()  # sends of a message whose prefix went out


def _refuse_a_wait_over_budget(send_data: Callable[..., Any], size: int) -> None:
    """RESOURCE_EXHAUSTED now for a message that must wait for its client's window while the
    stalled replies are over budget: a prefix sent alone broke the stream."""
    h2_stream: Any = getattr(send_data, "__self__", None)
    window = h2_stream._h2_connection.local_flow_control_window if h2_stream else None
    if window is not None and size > window(h2_stream.id):
        refuse_when_over_budget(h2_stream.connection)


# --- one socket write per loop turn --------------------------------------------------------------

FLUSH_AT = 65_536  # bytes gathered before writing at once: asyncio's default high-water mark


class CoalescedWrites:
    """A connection's transport that gathers ``write`` calls and hands them to the real transport
    in one write, once the callbacks already queued on the loop have run (``call_soon``): the
    replies of every call finished in that turn of the loop leave in one ``send``. Order is kept
    (every write of the connection goes through here); ``close`` writes what is gathered first;
    at :data:`FLUSH_AT` bytes it writes at once, so the transport's flow control (``pause_writing``
    on the protocol) works as before. Everything else is the real transport's."""

    __slots__ = ("_transport", "_loop", "_chunks", "_size", "_scheduled")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is gathered, now."""
        self._scheduled = False
        chunks = self._chunks
        if not chunks:
            return
        self._chunks, self._size = [], 0
        try:
            self._transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except Exception:  # in a loop callback: trio-asyncio would re-raise it and stop the loop
            log.exception("grpc: a write to a connection failed; closing it")
            self._transport.abort()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks, self._size = [], 0
        self._transport.abort()

    def is_closing(self) -> bool:
        closing: bool = self._transport.is_closing()
        return closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _h2_protocol_class() -> Any:
    return getattr(grpclib.protocol, "H2Protocol", None)


def writes_are_coalescable() -> str | None:
    """None, or what changed so that :func:`coalesce_writes` cannot work."""
    import inspect

    protocol_class = _h2_protocol_class()
    if protocol_class is None:
        return "grpclib.protocol.H2Protocol is gone"
    if getattr(grpclib.server, "H2Protocol", None) is None:
        return "grpclib.server no longer imports H2Protocol"
    try:
        factory = inspect.getsource(grpclib.server.Server._protocol_factory)
        made = inspect.getsource(protocol_class.connection_made)
        stream = inspect.getsource(grpclib.protocol.Stream)
    except (OSError, TypeError, AttributeError):
        return "grpclib's Server._protocol_factory or H2Protocol cannot be read"
    if "H2Protocol(" not in factory:
        return "grpclib.server.Server._protocol_factory no longer makes the module's H2Protocol"
    if "Connection(" not in made or "transport" not in made:
        return "grpclib.protocol.H2Protocol.connection_made no longer hands its transport on"
    if "self._transport.write(" not in stream:
        return "grpclib.protocol.Stream no longer writes through its connection's transport"
    return None


def coalesce_writes() -> bool:
    """Make grpclib servers write each connection's frames through :class:`CoalescedWrites`:
    one socket write per turn of the event loop instead of one per HTTP/2 send (three per unary
    reply). Idempotent. False: not installed (grpclib changed), one write per send."""
    reason = writes_are_coalescable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): writes are not coalesced")
        return False
    base = _h2_protocol_class()
    base = getattr(base, "__coalesced_base__", base)

    def connection_made(self: Any, transport: Any) -> None:
        coalesced = CoalescedWrites(transport, asyncio.get_running_loop())
        base.connection_made(self, coalesced)

    coalescing: Any = type(
        "CoalescingH2Protocol",
        (base,),
        {"connection_made": connection_made, "__coalesced_base__": base},
    )
    grpclib.server.H2Protocol = coalescing  # type: ignore[attr-defined]  # not re-exported
    return True


# --- trio-asyncio: ready callbacks in batches ---------------------------------------------------

BATCH = 64


def _trio_loop_class() -> Any:
    try:
        from trio_asyncio._base import BaseTrioEventLoop  # no public hook for this
    except ImportError:
        return None
    return BaseTrioEventLoop


def _main_loop_one_is_patchable() -> str | None:
    """None, or what is missing from trio-asyncio for :func:`batch_ready_callbacks`."""
    import inspect

    loop_class = _trio_loop_class()
    if loop_class is None:
        return "trio_asyncio._base.BaseTrioEventLoop is gone"
    one = getattr(loop_class, "_main_loop_one", None)
    if one is None:
        return "BaseTrioEventLoop._main_loop_one is gone"
    if list(inspect.signature(getattr(one, "__wrapped__", one)).parameters) != ["self", "no_wait"]:
        return "BaseTrioEventLoop._main_loop_one(self, no_wait) changed its signature"
    if not hasattr(loop_class, "_stopped"):  # a class attribute (None) until the loop starts
        return "BaseTrioEventLoop no longer has _stopped"
    return None


def batch_ready_callbacks(batch: int = BATCH) -> bool:
    """After each awaited asyncio callback, also run the callbacks already queued (up to
    ``batch``, without waiting) — what an asyncio loop does with its ready queue — before
    yielding to trio. Idempotent; the daemon calls it before opening its loop. False: not
    installed (trio-asyncio changed), callbacks run one per pass."""
    reason = _main_loop_one_is_patchable()
    if reason is not None:
        _fallback(f"{reason} (trio-asyncio): asyncio callbacks are not batched")
        return False
    loop_class = _trio_loop_class()
    current = loop_class._main_loop_one
    one_callback = getattr(current, "__wrapped__", current)

    async def ready_callbacks(self: Any, no_wait: bool = False) -> None:
        await one_callback(self, no_wait)
        for _ in range(batch):
            if self._stopped.is_set():
                return
            try:
                await one_callback(self, no_wait=True)
            except trio.WouldBlock:
                return

    ready_callbacks.__wrapped__ = one_callback  # type: ignore[attr-defined]
    loop_class._main_loop_one = ready_callbacks
    return True


# --- the listening socket ------------------------------------------------------------------------


def stop_listening(server: grpclib.server.Server) -> bool:
    """Close the server's listening socket(s) without touching its connections or in-flight
    requests (grpclib's ``Server.close`` cancels those). False: not possible, still listening."""
    listener = getattr(server, "_server", None)
    close = getattr(listener, "close", None)
    if not callable(close):
        _fallback(f"grpclib {grpclib.__version__}: Server._server is gone (still listening)")
        return False
    close()
    return True


# --- unknown methods --------------------------------------------------------------------------


def unknown_methods_are_answerable(server: grpclib.server.Server) -> str | None:
    """None, or what changed so that :func:`answer_unknown_methods` cannot work."""
    import inspect

    if not isinstance(getattr(server, "_mapping", None), dict):
        return "grpclib.server.Server no longer keeps its handlers in the dict _mapping"
    try:
        source = inspect.getsource(grpclib.server.request_handler)
    except (OSError, TypeError, AttributeError):
        return "grpclib.server.request_handler cannot be read"
    if "mapping.get(method_name)" not in source:
        return "grpclib.server.request_handler no longer looks methods up with mapping.get"
    return None


class UnknownMethods(dict[str, Handler]):
    """Handlers by path; an unknown path gets one that answers UNIMPLEMENTED."""

    def get(self, path: str, default: Any = None) -> Any:
        handler = super().get(path)
        return handler if handler is not None else _unimplemented(path)


def _unimplemented(path: str) -> Handler:
    async def unimplemented(stream: Any) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, f"unknown method {path[:100]!r}")

    return Handler(unimplemented, Cardinality.UNARY_UNARY, None, None)


def answer_unknown_methods(server: grpclib.server.Server) -> bool:
    """Before ``server.start``: answer an unknown method or service with UNIMPLEMENTED and
    ``content-type: application/grpc+proto``. False: grpclib changed; its bare answer stays."""
    reason = unknown_methods_are_answerable(server)
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): unknown methods lack content-type")
        return False
    server._mapping = UnknownMethods(server._mapping)
    return True


# --- a deadline already passed ------------------------------------------------------------------


def expired_deadlines_are_answerable() -> str | None:
    """None, or what changed so that :func:`answer_expired_deadlines` would not work."""
    wrapper = getattr(grpclib.server, "DeadlineWrapper", None)
    if wrapper is None or not hasattr(wrapper, "start"):
        return "grpclib.server no longer imports DeadlineWrapper with a start method"
    try:
        import inspect

        source = inspect.getsource(grpclib.server.request_handler)
    except (OSError, TypeError, AttributeError):
        return "grpclib.server.request_handler cannot be read"
    if "DeadlineWrapper()" not in source or "wrapper.cancelled" not in source:
        return "grpclib.server.request_handler no longer makes a DeadlineWrapper it checks"
    return None


def answer_expired_deadlines() -> bool:
    """A call whose deadline passed before its handling began gets DEADLINE_EXCEEDED (grpclib's
    answer to a deadline), not UNKNOWN and a logged traceback. False: grpclib changed."""
    reason = expired_deadlines_are_answerable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): a passed deadline is UNKNOWN")
        return False
    original = grpclib.server.DeadlineWrapper  # type: ignore[attr-defined]  # not re-exported
    if getattr(original, "_answers_expired", False):
        return True

    class ExpiredDeadlines(original):  # type: ignore[misc,valid-type]
        _answers_expired = True

        @contextlib.contextmanager
        def start(self, deadline: Any) -> Iterator[None]:
            inner = super().start(deadline)
            try:  # grpclib's own check of the time left is made here, as it is entered
                inner.__enter__()
            except TimeoutError:
                self.cancelled = True  # what ``cancel`` would have said, had a timer fired
                raise
            try:
                yield
            finally:
                inner.__exit__(None, None, None)  # its timer cancelled

    grpclib.server.DeadlineWrapper = ExpiredDeadlines  # type: ignore[attr-defined]
    return True


# --- request headers grpclib cannot read -----------------------------------------------------


def header_reading_is_patchable() -> str | None:
    """None, or what changed so that :func:`read_hostile_headers` would not work."""
    decode = getattr(grpclib.server, "decode_metadata", None)
    abort = getattr(grpclib.server, "_abort", None)
    if decode is None or abort is None:
        return "grpclib.server no longer imports decode_metadata and defines _abort"
    try:
        import inspect

        source = inspect.getsource(grpclib.server.request_handler)
    except (OSError, TypeError, AttributeError):
        return "grpclib.server.request_handler cannot be read"
    if "decode_metadata(headers)" not in source or TIMEOUT_REFUSAL not in source:
        return "grpclib.server.request_handler no longer reads metadata and deadlines so"
    return None


TIMEOUT_REFUSAL = "'Invalid grpc-timeout header'"


def read_hostile_headers() -> bool:
    """A ``-bin`` metadata value that is not base64 is left out (grpclib's decode raised before
    the call was answered: no answer, the stream never released, a traceback in the log — a
    client filled a connection's 100 streams with them, token or not); a ``grpc-timeout`` that
    is not one is INVALID_ARGUMENT, not UNKNOWN. False: grpclib changed."""
    reason = header_reading_is_patchable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): bad -bin metadata hangs its call")
        return False
    decode = grpclib.server.decode_metadata  # type: ignore[attr-defined]  # not re-exported
    if getattr(decode, "_tolerant", False):
        return True

    def tolerant(headers: Any) -> Any:
        _ENCODING.set(next((v for k, v in headers if k == "grpc-encoding"), ""))
        _HEADER_BYTES.set(sum(len(k) + len(v) + 32 for k, v in headers))
        try:
            return decode(headers)
        except ValueError:  # binascii.Error, UnicodeEncodeError: a -bin value that is not one
            return decode([(k, v) for k, v in headers if not k.endswith("-bin") or _bin_ok(v)])

    tolerant._tolerant = True  # type: ignore[attr-defined]
    grpclib.server.decode_metadata = tolerant  # type: ignore[attr-defined]
    abort = grpclib.server._abort

    async def refuse(
        stream: Any, h2_status: int, grpc_status: Any = None, message: str | None = None
    ) -> None:
        if grpc_status is grpclib.const.Status.UNKNOWN and f"'{message}'" == TIMEOUT_REFUSAL:
            # with a content-type, which grpclib's answer lacks: grpcio, Go and Connect clients
            # said "missing content-type" instead of this status
            status = str(grpclib.const.Status.INVALID_ARGUMENT.value)
            await stream.send_headers([(":status", str(h2_status)),
                                       ("content-type", "application/grpc+proto"),
                                       ("grpc-status", status), ("grpc-message", message)],
                                      end_stream=True)  # fmt: skip
            if stream.closable:
                stream.reset_nowait()
            return
        await abort(stream, h2_status, grpc_status, message)

    grpclib.server._abort = refuse  # type: ignore[assignment]
    return True


def _bin_ok(value: str) -> bool:
    try:
        grpclib.metadata.decode_bin_value(value.encode("ascii"))
    except ValueError:
        return False
    return True


# --- streams reset before their task started ----------------------------------------------------


def _handler_sources(*names: str) -> list[str] | str:
    """The source of grpclib's own ``Handler`` methods (under our wrappers), or what is
    missing."""
    handler = getattr(grpclib.server, "Handler", None)
    if handler is None or not all(hasattr(handler, name) for name in names):
        return f"grpclib.server.Handler has no {' and '.join(names)}"
    try:
        import inspect

        return [inspect.getsource(inspect.unwrap(getattr(handler, name))) for name in names]
    except (OSError, TypeError, ValueError):
        return "grpclib.server.Handler cannot be read"


def reset_streams_are_releasable() -> str | None:
    """None, or what changed so that :func:`release_reset_streams` would not work."""
    sources = _handler_sources("accept", "cancel")
    if isinstance(sources, str):
        return sources
    accept, cancel = sources
    if "self._tasks[stream]" not in accept or "self._tasks.pop(stream)" not in cancel:
        return "grpclib.server.Handler no longer keeps each stream's task in _tasks"
    return None


def release_reset_streams() -> bool:
    """A stream cancelled before its task ran is released all the same. Idempotent. False:
    grpclib changed, and such streams stay until their connection closes."""
    if getattr(getattr(grpclib.server, "Handler", None), "_releases_reset", False):
        return True
    reason = reset_streams_are_releasable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): reset streams are kept")
        return False
    handler = grpclib.server.Handler
    accept, cancel = handler.accept, handler.cancel

    def accepting(self: Any, stream: Any, headers: Any, release_stream: Any) -> None:
        pending = [release_stream]

        def release_once() -> None:
            if pending:
                pending.pop()()

        stream.foundry_release = release_once
        accept(self, stream, headers, release_once)

    def cancelling(self: Any, stream: Any) -> None:
        task = self._tasks.get(stream)
        cancel(self, stream)
        release = getattr(stream, "foundry_release", None)
        if task is not None and release is not None:
            task.add_done_callback(lambda _: release())

    handler.accept = functools.wraps(accept)(accepting)  # type: ignore[method-assign]
    handler.cancel = functools.wraps(cancel)(cancelling)  # type: ignore[method-assign]
    handler._releases_reset = True  # type: ignore[attr-defined]
    return True


# --- the tasks of a closed connection ------------------------------------------------------------


def finished_tasks_are_forgettable() -> str | None:
    """None, or what changed so that :func:`forget_finished_tasks` would not work."""
    sources = _handler_sources("close", "cancel")
    if isinstance(sources, str):
        return sources
    close, cancel = sources
    if "self._cancelled.update(self._tasks.values())" not in close:
        return "grpclib.server.Handler.close no longer moves its tasks to _cancelled"
    if "self._cancelled.add(task)" not in cancel:
        return "grpclib.server.Handler.cancel no longer keeps the task in _cancelled"
    return None


def forget_finished_tasks() -> bool:
    """A handler (one a connection) lets go of its requests' tasks once they are done. Without
    this a closed connection's handler kept every task it had — in ``_tasks`` for good, and
    in ``_cancelled`` until a next request on the same connection, which never comes — and
    with each task's frames its stream's buffered body: 200 streams of ~4 MiB bodies left
    unfinished, their connection reset, kept ~900 MB for good. Idempotent. False: grpclib
    changed, and they stay."""
    handler = getattr(grpclib.server, "Handler", None)
    if getattr(handler, "_forgets_finished", False):
        return True
    reason = finished_tasks_are_forgettable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): a closed connection's tasks stay")
        return False
    assert handler is not None
    close, cancel = handler.close, handler.cancel

    def closing(self: Any) -> None:
        for stream in self._tasks:
            _drop_body(stream)
        close(self)
        self._tasks.clear()  # all cancelled, in _cancelled now: each leaves it once done
        for task in list(self._cancelled):
            _forget_when_done(self._cancelled, task)

    def cancelling(self: Any, stream: Any) -> None:
        task = self._tasks.get(stream)
        if task is None:  # a reset after the handler closed: its task is cancelled already
            return
        cancel(self, stream)
        _forget_when_done(self._cancelled, task)

    handler.close = functools.wraps(close)(closing)
    handler.cancel = functools.wraps(cancel)(cancelling)
    handler._forgets_finished = True
    return True


def _drop_body(stream: Any) -> None:
    """Let go of what a stream of a closed connection buffered of its request body (its task,
    cancelled, reads no more of it): freed now, not when the collector next finds the task's
    reference cycles — which, with the daemon's thresholds, an idle daemon never does."""
    buffer: Any = getattr(stream, "buffer", None)
    acked, unacked = getattr(buffer, "_acked", None), getattr(buffer, "_unacked", None)
    if isinstance(acked, collections.deque):
        acked.clear()
        buffer._acked_size = 0
    if isinstance(unacked, asyncio.Queue):
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                unacked.get_nowait()


def _forget_when_done(tasks: set[Any], task: Any) -> None:
    if task.done():
        tasks.discard(task)
    else:
        task.add_done_callback(tasks.discard)


# --- control frame floods -------------------------------------------------------------------------


class ControlFlood(h2.exceptions.ProtocolError):
    """A peer sent more PING, SETTINGS and PRIORITY frames than its budget."""


FLOOD_WARNINGS = FloodWarnings("gRPC")


def control_frames_are_countable() -> str | None:
    """None, or what changed so that :func:`limit_control_frames` would not work."""
    connection = getattr(grpclib.protocol, "Connection", None)
    if connection is None or not hasattr(connection, "feed"):
        return "grpclib.protocol.Connection has no feed"
    try:
        import inspect

        feed = inspect.getsource(inspect.unwrap(connection.feed))
        received = inspect.getsource(grpclib.protocol.H2Protocol.data_received)
    except (OSError, TypeError, ValueError, AttributeError):
        return "grpclib.protocol cannot be read"
    if "self._connection.receive_data(data)" not in feed:
        return "grpclib.protocol.Connection.feed no longer hands h2 the bytes"
    if "except ProtocolError" not in received:
        return "grpclib's H2Protocol.data_received no longer closes on h2's ProtocolError"
    return None


def can_write_now(stream: Any) -> bool:
    """Whether a server stream's connection takes writes now (its peer reads): grpclib's
    sends wait for that, for good when the peer reads nothing. False when grpclib changed."""
    ready = getattr(getattr(getattr(stream, "_stream", None), "connection", None),
                    "write_ready", None)  # fmt: skip
    return isinstance(ready, asyncio.Event) and ready.is_set()


def limit_control_frames() -> bool:
    """A gRPC connection that floods the daemon with control frames
    (``connections.ControlFrames``) is sent GOAWAY (ENHANCE_YOUR_CALM) and closed: its
    ``feed`` raises an h2 ``ProtocolError``, which grpclib's ``data_received`` answers by
    closing the connection. Idempotent. False: grpclib changed, and floods are served."""
    connection = getattr(grpclib.protocol, "Connection", None)
    if getattr(connection, "_limits_control_frames", False):
        return True
    reason = control_frames_are_countable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): control frame floods are served")
        return False
    assert connection is not None
    feed = connection.feed

    def feeding(self: Any, data: bytes) -> Any:
        try:
            events = feed(self, data)
        except h2.exceptions.ProtocolError:
            # h2 queued its GOAWAY (``h2_guard``'s refusals say ENHANCE_YOUR_CALM): sent before
            # grpclib closes, as the HTTP listener sends it, not a close without a word
            with contextlib.suppress(Exception):
                self.flush()
            raise
        what = flooded(self.__dict__, events)  # (unknown frames counted, then left out)
        if what is not None:
            self._connection.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
            with contextlib.suppress(Exception):
                self.flush()
            FLOOD_WARNINGS.closed(what)
            raise ControlFlood(f"too many {what}")
        if any(type(event) is UnknownFrameReceived for event in events):
            # RFC 9113 §5.5: an unknown frame type is ignored. grpclib has no handler for it:
            # the connection was dropped, with a traceback in the log each time (no token
            # needed, before any call: a client wrote ~1 MB of log a second)
            events = [event for event in events if type(event) is not UnknownFrameReceived]
        if any(type(event) is RequestReceived for event in events):
            events = _refuse_pathless(self._connection, events)
        return events

    connection.feed = functools.wraps(feed)(feeding)
    connection._limits_control_frames = True
    return True


def _refuse_pathless(connection: Any, events: list[Any]) -> list[Any]:
    """A request without ``:path`` or ``:method`` is reset (PROTOCOL_ERROR), and none of its
    stream's events reach grpclib, which never answered it and logged a traceback each time
    (a client wrote ~575 KB of log a second; 100 of them held a connection's every stream)."""
    refused = {
        event.stream_id
        for event in events
        if type(event) is RequestReceived
        and not {":path", ":method"} <= {name for name, _ in event.headers}
    }
    if not refused:
        return events
    for stream_id in refused:
        with contextlib.suppress(Exception):  # (a stream h2 has closed already)
            connection.reset_stream(stream_id, error_code=ErrorCodes.PROTOCOL_ERROR)
    return [e for e in events if getattr(e, "stream_id", None) not in refused]


# --- memory: closed HTTP/2 streams, cancelled asyncio timers --------------------------------------

CLOSED_STREAMS = 4_096
DECODED_HEADER_BYTES = 1 << 20  # a header list past this still closes its connection


def _h2_connection_class() -> Any:
    return getattr(grpclib.protocol, "H2Connection", None)


def closed_streams_are_boundable() -> str | None:
    """None, or what changed so that :func:`bound_closed_streams` cannot work."""
    h2_class = _h2_connection_class()
    if h2_class is None:
        return "grpclib.protocol no longer imports H2Connection"
    if not isinstance(getattr(h2_class, "MAX_CLOSED_STREAMS", None), int):
        return "h2's H2Connection.MAX_CLOSED_STREAMS is gone"
    if not isinstance(getattr(h2_class, "DEFAULT_MAX_HEADER_LIST_SIZE", None), int):
        return "h2's H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE is gone"
    return None


def bound_closed_streams(limit: int = CLOSED_STREAMS) -> bool:
    """Make grpclib's HTTP/2 connections remember how their last ``limit`` closed streams ended,
    not h2's 65,536: at ~145 bytes each that was 9.5 MB per long-lived connection, reached after
    65,536 calls on it (a soak grew by 8 MB from it), and grpclib keeps a closed connection until
    ten more have been accepted. h2 needs the memory only for frames that arrive after a stream
    closed (a DATA frame on a forgotten stream is still refused with RST_STREAM). False: not
    installed (h2 or grpclib changed)."""
    reason = closed_streams_are_boundable()
    if reason is not None:
        _fallback(f"{reason} (grpclib {grpclib.__version__}): closed streams are not bounded")
        return False
    current = _h2_connection_class()
    base = getattr(current, "__bounded_base__", current)
    bounded: Any = type(
        "BoundedH2Connection",
        (base,),
        {"MAX_CLOSED_STREAMS": limit, "__bounded_base__": base,
         # headers decoded up to this (h2's 64 KiB refused past it by closing the connection,
         # every other call on it too: a RecvRequest listener refuses one call's instead)
         "DEFAULT_MAX_HEADER_LIST_SIZE": DECODED_HEADER_BYTES},
    )  # fmt: skip
    grpclib.protocol.H2Connection = bounded  # type: ignore[attr-defined]  # not re-exported
    return True


def _timers_are_compactable() -> str | None:
    """None, or what is missing from trio-asyncio for :func:`drop_cancelled_timers`."""
    import inspect

    loop_class = _trio_loop_class()
    if loop_class is None:
        return "trio_asyncio._base.BaseTrioEventLoop is gone"
    if not callable(getattr(loop_class, "_timer_handle_cancelled", None)):
        return "BaseTrioEventLoop._timer_handle_cancelled is gone"
    one = getattr(loop_class, "_main_loop_one", None)
    try:
        target: Any = getattr(one, "__wrapped__", one)
        source = inspect.getsource(target)
    except (OSError, TypeError):
        return "BaseTrioEventLoop._main_loop_one cannot be read"
    if "heapq.heappush(self._timers" not in source:
        return "BaseTrioEventLoop._main_loop_one no longer keeps timers in the heap _timers"
    return None


def drop_cancelled_timers(minimum: int = 100) -> bool:
    """Drop cancelled asyncio timers from trio-asyncio's heap once they are more than half of it
    (and it holds at least ``minimum``), as asyncio's own loop does. trio-asyncio keeps a
    cancelled timer until the time it was set for, and grpclib sets one per call with a deadline
    and cancels it when the call ends: at 1,000 calls/s with 60 s deadlines that was 60,000 dead
    timers (with their contexts, ~200 bytes each), growing with the deadlines clients choose.
    Idempotent. False: not installed (trio-asyncio changed)."""
    reason = _timers_are_compactable()
    if reason is not None:
        _fallback(f"{reason} (trio-asyncio): cancelled timers stay until they are due")
        return False

    def timer_handle_cancelled(self: Any, handle: Any) -> None:
        # Called by TimerHandle.cancel() just before the handle marks itself cancelled.
        cancelled = getattr(self, "_cancelled_timers", 0) + 1
        timers = self._timers
        if len(timers) >= minimum and cancelled * 2 > len(timers):
            timers[:] = [t for t in timers if t is not handle and not t.cancelled()]
            heapq.heapify(timers)
            cancelled = 0
        self._cancelled_timers = cancelled

    _trio_loop_class()._timer_handle_cancelled = timer_handle_cancelled
    return True
