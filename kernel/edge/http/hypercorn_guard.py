"""The one private part of hypercorn we reach into (pinned ``>=0.18,<0.19``; the canary is in
``tests/kernel/edge/test_http_units.py``): how one connection is served — what its error does,
and whether the listener is at its cap of connections.

hypercorn's trio worker serves each connection with ``TCPServer.run`` under
``trio.serve_listeners``, and an exception escaping it — not an ``OSError`` — leaves that
nursery, ending the listener and with it the daemon. A client can cause one: wsproto decodes a
WebSocket upgrade's ``Sec-WebSocket-Protocol`` as ASCII, in the upgrade's handling, before the
app (and its token check) sees the request, so one header byte stopped the daemon.
:func:`contain_connection_errors` makes such an error end its connection alone, logged. The
same wrapper closes a connection at once while the listener holds its cap of them
(:func:`cap_connections`, ``edge/connections.py``), and has a connection reset (RST) read as its
end, as a FIN does (:class:`_ResetAsEnd`), and bounds its sends to a client that reads none of
them (:func:`watch_sends`, ``send_watch.py``). And an HTTP/2 connection's table of streams answers
for a stream already closed (:func:`ignore_data_of_closed_streams`), and a closed
connection's streams let go (:func:`release_streams_of_closed_connections`), one that floods
control frames closed (:func:`limit_control_frames`), and a stream's reply its client opens no
flow-control window for bounded (:func:`bound_http2_streams`), as a WebSocket's messages are
(:func:`bound_websocket_messages`), and in a stop a stream's end written before its connection's
GOAWAY (:func:`end_streams_before_goaway`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
from typing import Any

import trio
from foundry.kernel.edge.connections import (
    ConnectionCap,
    FloodWarnings,
    RecurringWarning,
    flooded,
)
from foundry.kernel.edge.http.send_watch import PIECE, SendGivenUp, SendWatch

log = logging.getLogger("foundry.http")
CONNECTION_FAILED = RecurringWarning(log)  # a client's to cause, once a connection


def contain_connection_errors() -> None:
    """``TCPServer.run`` wrapped: an ``Exception`` escaping one connection is logged (one line)
    and closes that connection; cancellation and the rest pass as ever. Idempotent."""
    from hypercorn.trio.tcp_server import TCPServer

    run = TCPServer.run
    if getattr(run, "contained", False):
        return

    async def contained(self: Any) -> None:
        config = getattr(self, "config", None)
        cap: ConnectionCap | None = getattr(config, CAP_ATTRIBUTE, None)
        if cap is not None and not cap.admit():
            with contextlib.suppress(Exception):
                await self.stream.aclose()
            return
        self.stream = _ResetAsEnd(self.stream, getattr(config, WATCH_ATTRIBUTE, None))
        try:
            await run(self)
        except Exception as exc:  # (an ExceptionGroup of the connection's tasks too)
            cause = _first_leaf(exc)
            kind = type(cause).__name__
            CONNECTION_FAILED.warning("an HTTP connection failed and is closed: %s: %s", kind,
                                      str(cause)[:200], key=kind)  # fmt: skip
            with contextlib.suppress(Exception):
                await self.stream.aclose()
        finally:
            if cap is not None:
                cap.release()

    contained = functools.wraps(run)(contained)
    contained.contained = True  # type: ignore[attr-defined]
    TCPServer.run = contained  # type: ignore[method-assign]


def release_streams_of_closed_connections() -> None:
    """Two waits of hypercorn's that outlived their connection, holding its requests' memory
    and its place under ``[daemon] max_connections`` (200 streams of ~4 MiB bodies, reset
    mid-upload: ~800 MB a round, for good; with 3 places, three such resets shut the listener):

    - On a closed HTTP/2 connection, hypercorn tells each stream's app of the disconnect but
      leaves the stream's send buffer as it is, its "empty" event unset: an app answering the
      disconnect (connectrpc sends its CANCELED trailers) waited in the buffer's ``drain`` for
      good — no send loop runs any more. The buffers are now closed with the connection: what
      an app sends then is dropped, as hypercorn does for a buffer closed under a send.
    - Once its reads have ended, the connection's task still waited out its keep-alive timer
      (60 s), which each app that ended restarted. The timer now ends at once after the reads.

    Idempotent."""
    from hypercorn.events import Closed
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.trio.tcp_server import TCPServer

    handle = H2Protocol.handle
    if getattr(handle, "buffers_released", False):
        return
    read, idle = TCPServer._read_data, TCPServer._idle_timeout

    async def handling(self: Any, event: Any) -> None:
        await handle(self, event)
        if isinstance(event, Closed):
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()

    async def reading(self: Any) -> None:
        try:
            await read(self)
        finally:
            self.foundry_reads_ended = True
            await self.idle_task.stop()

    async def idle_timeout(self: Any) -> None:
        if not getattr(self, "foundry_reads_ended", False):
            await idle(self)

    handling = functools.wraps(handle)(handling)
    handling.buffers_released = True  # type: ignore[attr-defined]
    H2Protocol.handle = handling  # type: ignore[method-assign]
    TCPServer._read_data = functools.wraps(read)(reading)  # type: ignore[method-assign]
    TCPServer._idle_timeout = functools.wraps(idle)(idle_timeout)  # type: ignore[method-assign]


# Seconds a stopping HTTP/2 connection waits for a closed stream's END_STREAM to be written
# before its GOAWAY (the send task writes it within a few turns of the loop).
STREAM_END_WAIT = 1.0


def end_streams_before_goaway() -> None:
    """In a stop (hypercorn's ``context.terminated``), an HTTP/2 connection whose last stream's
    app returned is closed (GOAWAY) as soon as the stream is: its app's ``EndBody`` waits only
    until the send task has taken the stream's last bytes, and that task writes END_STREAM a
    turn later — after the GOAWAY, when h2 refuses it. Every Connect stream open at a stop lost
    its end (4 stops in 5): the client read a connection ended mid-stream, an error, not the
    end-of-stream frame saying UNAVAILABLE (a hunt). Now a stream's close (``_close_stream``,
    after which hypercorn looks whether to send GOAWAY, with no turn of the loop between) waits
    in a stop until the send task has let every stream's buffer go, their END_STREAMs written,
    for up to :data:`STREAM_END_WAIT` — every stream's: the close of a stream whose end went out
    first sent GOAWAY ahead of another's (1 stream in 50 lost its end, 1 stop in 4; a review).
    Idempotent."""
    from hypercorn.protocol.h2 import H2Protocol

    close_stream = H2Protocol._close_stream
    if getattr(close_stream, "ends_before_goaway", False):
        return

    async def closing_stream(self: Any, stream_id: int) -> None:
        await close_stream(self, stream_id)
        if self.context.terminated.is_set():
            with trio.move_on_after(STREAM_END_WAIT):
                # (hypercorn sets no event when its send task lets a buffer go)
                while self.stream_buffers and not self.closed:  # noqa: ASYNC110
                    await trio.sleep(0.002)

    closing_stream = functools.wraps(close_stream)(closing_stream)
    closing_stream.ends_before_goaway = True  # type: ignore[attr-defined]
    H2Protocol._close_stream = closing_stream  # type: ignore[method-assign]


FLOOD_WARNINGS = FloodWarnings("HTTP")


def limit_control_frames() -> None:
    """An HTTP/2 connection that floods the daemon with control frames
    (``connections.ControlFrames``) is sent GOAWAY (ENHANCE_YOUR_CALM) and closed, before its
    events are handled: hypercorn's protocol hands them to ``_handle_events``. Idempotent."""
    from h2.errors import ErrorCodes
    from hypercorn.events import Closed
    from hypercorn.protocol.h2 import H2Protocol

    handle_events = H2Protocol._handle_events
    if getattr(handle_events, "control_frames_limited", False):
        return

    async def handling_events(self: Any, events: list[Any]) -> None:
        what = flooded(self.__dict__, events)
        if what is not None:
            FLOOD_WARNINGS.closed(what)
            self.connection.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
            await self._flush()
            await self.send(Closed())
            return
        await handle_events(self, events)

    handling_events = functools.wraps(handle_events)(handling_events)
    handling_events.control_frames_limited = True  # type: ignore[attr-defined]
    H2Protocol._handle_events = handling_events  # type: ignore[method-assign]


CLOSED_STREAMS = 4_096  # as the gRPC listener's connections (``grpc/internals.py``)


def remember_fewer_closed_streams(limit: int = CLOSED_STREAMS) -> None:
    """h2 remembers how a connection's last 65,536 closed streams ended (~145 bytes each: 9.5
    MB a connection once it has served that many). hypercorn ended each HTTP/2 connection after
    1,000 requests, which bounded it — and failed the calls in flight on it, a live Watch among
    them; the daemon lifts that cap (``server.py``), so a connection's h2 remembers ``limit``
    instead: its table, empty when the protocol is made, is replaced. Idempotent."""
    from h2.utilities import SizeLimitDict
    from hypercorn.protocol.h2 import H2Protocol

    init = H2Protocol.__init__
    if getattr(init, "closed_streams_bounded", False):
        return

    def bounded(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.connection._closed_streams = SizeLimitDict(size_limit=limit)

    bounded = functools.wraps(init)(bounded)
    bounded.closed_streams_bounded = True  # type: ignore[attr-defined]
    H2Protocol.__init__ = bounded  # type: ignore[method-assign]


def ignore_data_of_closed_streams() -> None:
    """hypercorn's HTTP/2 protocol finds a DATA frame's stream with ``streams[id]``: a stream
    answered and closed before its body ended (a 404, a body timeout) is gone from the table,
    and the KeyError ended the whole connection — every other stream on it (a page's Watch).
    Its StreamEnded handling ignores that KeyError already; this gives DATA the same: the
    table answers a stream it no longer holds with one that takes nothing (h2 still returns the
    data's flow-control credit to the connection). Idempotent."""
    from hypercorn.protocol.h2 import H2Protocol

    init = H2Protocol.__init__
    if getattr(init, "closed_streams_ignored", False):
        return

    def with_gone_streams(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.streams = _GoneStreams(self.streams)

    with_gone_streams = functools.wraps(init)(with_gone_streams)
    with_gone_streams.closed_streams_ignored = True  # type: ignore[attr-defined]
    H2Protocol.__init__ = with_gone_streams  # type: ignore[method-assign]


class _GoneStream:
    async def handle(self, event: Any) -> None:
        return None  # the stream was answered and closed: what its client still sends is moot


class _GoneStreams(dict[int, Any]):
    def __missing__(self, stream_id: int) -> Any:
        return _GONE


_GONE = _GoneStream()


class _ResetAsEnd:
    """A connection's stream whose reset reads as its end (``b""``), as a FIN does. hypercorn
    tells h11 of an end it reads, not of a reset: h11 then took the connection for a live
    keep-alive one once its response ended, and held it ``[http]``'s keep-alive time (60 s)
    with its place of ``[daemon] max_connections`` — a client resetting Watch streams shut the
    HTTP listener for a minute. Once reset, sending fails at once as hypercorn expects of a
    broken stream (the 400 it sends for a request cut short would otherwise hit the send still
    in progress, and log the connection as failed)."""

    def __init__(self, stream: Any, watch: SendWatch | None = None) -> None:
        self._stream, self._watch = stream, watch
        self._reset = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data: bytes | bytearray = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError:
            self._reset = True
            return b""
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._reset:
            raise trio.BrokenResourceError("the connection was reset")
        if self._watch is None:
            await self._stream.send_all(data)
            return
        try:
            await self._watch.send(self._stream, data)
        except SendGivenUp:
            # Broken mid-piece: nothing more goes out on it, and hypercorn's HTTP/1.1 protocol
            # would keep the connection open, its reads waiting on a client that sends nothing.
            self._reset = True
            await trio.aclose_forcefully(self._stream)
            raise


WATCH_ATTRIBUTE = "foundry_send_watch"


def watch_sends(config: Any, watch: SendWatch) -> None:
    """Have ``watch`` bound what the listener served with hypercorn ``config`` sends to clients
    that do not read (``send_watch.py``; once :func:`contain_connection_errors` is installed:
    its wrapper hands the connection's stream the watch)."""
    setattr(config, WATCH_ATTRIBUTE, watch)


def bound_websocket_messages() -> None:
    """A WebSocket's messages held to ``websocket_max_message_size`` (the daemon's 64 KiB):
    hypercorn wrote each fragment before it checked the size, counted a text message's
    characters (not its bytes), answered an oversized message with a close (1009) but went on
    keeping every fragment the client sent after it until the client left (500 MiB sent: ~500
    MiB held), and negotiated permessage-deflate, whose inflating of a frame is unbounded (65
    KB frames inflating to 64 MiB each took the daemon to 3.7 GB, its loop blocked for
    seconds). Now a fragment that would pass the size (in UTF-8 bytes) is not kept, the close
    is followed by the stream's end (its connection's, on HTTP/1.1) — a close the client began
    too —, and no compression is agreed to (the daemon's messages are small events).
    Idempotent."""
    from hypercorn.protocol.events import EndData, StreamClosed
    from hypercorn.protocol.ws_stream import (
        FrameTooLargeError,
        Handshake,
        WebsocketBuffer,
        WSStream,
    )
    from wsproto.events import CloseConnection

    init, extend = Handshake.__init__, WebsocketBuffer.extend
    handle_events = WSStream._handle_events
    if getattr(extend, "messages_bounded", False):
        return

    def without_compression(self: Any, headers: Any, *args: Any, **kwargs: Any) -> None:
        # Offered or not, none is accepted (the app checks the header and answers a bad one
        # 400): not parsed here, where a byte that is not ASCII dropped the connection unanswered.
        kept, readable = _handshake_headers(headers)
        init(self, kept, *args, **kwargs)
        self.extensions = None
        # RFC 6455 §4.2.1: one key, a 16-byte nonce in base64 — hypercorn took any (a key
        # "abc", or two keys, was upgraded): without one the handshake is answered 400
        keys = [value for name, value in headers if name.lower() == b"sec-websocket-key"]
        if len(keys) > 1 or (keys and not _a_websocket_key(keys[0])) or not readable:
            self.key = None
        if not readable:
            self.version = None  # (HTTP/2's upgrade has no key: its version is checked)

    def extending(self: Any, event: Any) -> None:
        # In bytes, as the cap says: hypercorn counts a text message's characters (64 Ki
        # four-byte characters were 256 KiB held)
        if self.length > self.max_length:  # over already: nothing more, until its clear()
            raise FrameTooLargeError()
        data = event.data
        size = len(data) if isinstance(data, bytes) or data.isascii() else len(data.encode())
        new = self.value is None  # a new message starts at 0
        held, pieces = (0, 0) if new else (self.held_bytes, self.fragments)
        # Fragments bounded too: hypercorn reads a message's fragments without a turn for
        # anyone else, ~65 µs each, so 30,000 one-byte ones stalled every client for seconds
        if held + size > self.max_length or pieces >= MAX_FRAGMENTS:
            self.value, self.length = None, self.max_length + 1  # over: nothing more is kept
            raise FrameTooLargeError()
        extend(self, event)
        # (a frame arriving in several reads is several events: one fragment)
        self.held_bytes, self.fragments = held + size, pieces + bool(event.frame_finished)

    async def handling_events(self: Any) -> None:
        send = self.send
        connection = getattr(self, "connection", None)  # (made by the handshake's accept)
        failed = _noting_unreadable_frames(connection) if connection is not None else []

        async def ending_first(event: Any) -> None:
            if isinstance(event, StreamClosed) and failed:
                # A frame wsproto could not read (unmasked, invalid UTF-8, a bad close code…)
                # is a close event while the connection is open: hypercorn ended the stream
                # without a close frame, so the client saw 1006, not why (RFC 6455 §7.1.7).
                close = failed.pop()
                reason = close.reason.encode()[:123].decode(errors="ignore")
                await self._send_wsproto_event(CloseConnection(code=close.code, reason=reason))
            # A stream closed on the client's close (or after a 1009) is ended too: over
            # HTTP/2 it stayed open in the connection's state (only the app let go), and 100
            # such closes used up the connection's streams (GOAWAY). (HTTP/1.1: no-op.) Not
            # awaited here: hypercorn's end waits for the stream's buffer to empty, and this is
            # the task reading the connection — a client at window 0 held all its streams.
            if isinstance(event, StreamClosed):
                self.task_group.spawn(send, EndData(stream_id=self.stream_id))
            await send(event)

        self.send = ending_first
        try:
            await handle_events(self)
            if self.buffer.length > self.buffer.max_length and not self.closed:
                await self.send(StreamClosed(stream_id=self.stream_id))  # after its 1009
        finally:
            self.send = send
            if connection is not None:
                connection.__dict__.pop("events", None)

    extending = functools.wraps(extend)(extending)
    extending.messages_bounded = True  # type: ignore[attr-defined]
    Handshake.__init__ = functools.wraps(init)(without_compression)  # type: ignore[method-assign]
    WebsocketBuffer.extend = extending  # type: ignore[method-assign]
    handling_events = functools.wraps(handle_events)(handling_events)
    WSStream._handle_events = handling_events  # type: ignore[method-assign]


MAX_FRAGMENTS = 256  # of one WebSocket message (64 KiB: 256 bytes each, on average)
_LISTED = (b"connection", b"sec-websocket-protocol")  # comma lists hypercorn reads as ASCII


def _handshake_headers(headers: Any) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The upgrade's headers as hypercorn's handshake should read them, and whether it can:
    no extensions (none is agreed to), one subprotocol list (RFC 9110 5.3: a header given twice
    is one list; hypercorn kept the last, and a second bearer subprotocol in a header of its own
    passed the one-token rule), and False for a list with a byte that is not ASCII (its decode
    failed in the handshake: the connection dropped unanswered; now a 400)."""
    kept: list[tuple[bytes, bytes]] = []
    protocols: list[bytes] = []
    readable = True
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"sec-websocket-extensions":
            continue
        if lowered in _LISTED and not value.isascii():
            readable = False
            continue
        if lowered == b"sec-websocket-protocol":
            protocols.append(value)
            continue
        kept.append((name, value))
    if protocols:
        kept.append((b"sec-websocket-protocol", b", ".join(protocols)))
    return kept, readable


def _a_websocket_key(value: bytes) -> bool:
    try:
        return len(base64.b64decode(value.strip(), validate=True)) == 16
    except binascii.Error:
        return False


def _noting_unreadable_frames(connection: Any) -> list[Any]:
    """The close events wsproto makes of frames it could not read (its connection still open),
    noted as ``connection.events`` yields them: the list they go to."""
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection

    failed: list[Any] = []
    events = connection.events

    def noting() -> Any:
        for event in events():
            if isinstance(event, CloseConnection) and connection.state is ConnectionState.OPEN:
                failed.append(event)
            yield event

    connection.events = noting  # (this call's: the method is the class's again after it)
    return failed


def bound_http2_streams() -> None:
    """An HTTP/2 stream's reply waits in hypercorn's buffer of the stream (``StreamBuffer``:
    its app's send waits there while it holds 32 KiB) for the client's flow-control window: a
    client that kept its windows at 0, or opened them a byte at a time, held each reply it
    asked for — a whole ``GetRun`` a stream, a Watch's task and its subscription — for as long
    as it kept the connection, its socket moving all the while (so the connection's watch saw
    nothing). Now each buffer is watched (``send_watch.py``) while it holds bytes: it moves
    when it empties or has handed the connection ``PIECE`` bytes more — or, while its own
    window would let it send, when the connection sent as much of its other streams for each
    stream so waiting (it waits its turn: behind a stream the client put first, as a browser
    orders its streams, or for the connection's window). Given up, its stream
    is reset (CANCEL) as if its client had reset it — its app told, its buffer emptied and
    let go with its place in the connection's priority tree. Idempotent."""
    from hypercorn.protocol.events import Body, Data, EndBody, EndData, Trailers
    from hypercorn.protocol.h2 import H2Protocol, StreamBuffer

    send, push, pop, close = (
        H2Protocol.stream_send, StreamBuffer.push, StreamBuffer.pop, StreamBuffer.close
    )  # fmt: skip
    if getattr(send, "streams_bounded", False):
        return
    buffered = (Body, Data, EndBody, EndData, Trailers)

    async def stream_send(self: Any, event: Any) -> None:
        if isinstance(event, buffered):
            buffer = self.stream_buffers.get(event.stream_id)
            if buffer is not None and "foundry_held" not in buffer.__dict__:
                watch: SendWatch | None = getattr(self.config, WATCH_ATTRIBUTE, None)
                if watch is not None:
                    buffer.foundry_held = _HeldReply(watch, buffer, self, event.stream_id)
        await send(self, event)

    async def pushing(self: Any, data: bytes) -> None:
        held: _HeldReply | None = self.__dict__.get("foundry_held")
        if held is not None and data and not held.watched and not self._complete:
            held.hold()
        await push(self, data)

    async def popping(self: Any, max_length: int) -> bytes:
        data: bytes = await pop(self, max_length)
        held: _HeldReply | None = self.__dict__.get("foundry_held")
        if held is not None and data:
            held.moved(len(data), len(self.buffer))
            held.carry_others(len(data))
        return data

    async def closing(self: Any) -> None:
        held: _HeldReply | None = self.__dict__.get("foundry_held")
        if held is not None:
            held.release()
        await close(self)

    stream_send = functools.wraps(send)(stream_send)
    stream_send.streams_bounded = True  # type: ignore[attr-defined]
    H2Protocol.stream_send = stream_send  # type: ignore[method-assign]
    StreamBuffer.push = functools.wraps(push)(pushing)  # type: ignore[method-assign]
    StreamBuffer.pop = functools.wraps(pop)(popping)  # type: ignore[method-assign]
    StreamBuffer.close = functools.wraps(close)(closing)  # type: ignore[method-assign]


FRAME = 16_384  # bytes of an HTTP/2 DATA frame (the default largest)


class _HeldReply:
    """An HTTP/2 stream's buffer, as :class:`SendWatch` watches it while it holds bytes."""

    __slots__ = ("_watch", "_buffer", "_protocol", "_stream_id", "since", "watched", "_moved")

    def __init__(self, watch: SendWatch, buffer: Any, protocol: Any, stream_id: int) -> None:
        self._watch, self._buffer = watch, buffer
        self._protocol, self._stream_id = protocol, stream_id
        self.since, self.watched, self._moved = 0.0, False, 0

    @property
    def left(self) -> int:
        return len(self._buffer.buffer)

    def hold(self) -> None:
        self.watched, self._moved = True, 0
        self._watch.hold(self)
        self._protocol.__dict__.setdefault("foundry_held", set()).add(self)

    def release(self) -> None:
        if self.watched:
            self.watched = False
            self._watch.release(self)
            self._protocol.__dict__.get("foundry_held", set()).discard(self)

    def moved(self, size: int, left: int) -> None:
        """``size`` bytes went to the connection, ``left`` wait: a window opened a byte at a
        time moves it only once it adds up to a piece."""
        if not left:
            self.release()
            return
        self._progress(size)

    def carry_others(self, size: int) -> None:
        """The connection sent ``size`` bytes of this stream: the others waiting their turn
        (behind it in the client's priorities, or for the connection's window) move with it,
        sharing them — a client that reads little holds few replies (each of 70 streams moved
        by every 16 KiB its connection sent held 6 MB each, none stalled, at 17 KiB/s)."""
        held = self._protocol.__dict__.get("foundry_held", ())
        waiting = [other for other in held if other is not self and other._waits_its_turn()]
        for other in waiting:
            other._progress(size // len(waiting))

    def _waits_its_turn(self) -> bool:
        """This stream's own window lets it send a frame (or all it holds) when its turn comes:
        one opened a byte at a time is its client's holding."""
        try:
            window = self._protocol.connection.local_flow_control_window(self._stream_id)
        except Exception:  # (h2's errors: the stream ended meanwhile)
            return False
        return bool(window >= min(self.left, FRAME))

    def _progress(self, size: int) -> None:
        self._moved += size
        if self._moved >= PIECE:
            self.since, self._moved = self._watch.now(), 0

    def give_up(self, reason: str) -> None:
        self.release()
        self._watch.soon(lambda: self._reset(reason))

    async def _reset(self, reason: str) -> None:
        """As hypercorn handles a client's reset of the stream, and the RST_STREAM sent."""
        from h2.errors import ErrorCodes
        from h2.exceptions import ProtocolError

        protocol, stream_id = self._protocol, self._stream_id
        if protocol.stream_buffers.get(stream_id) is not self._buffer:
            return  # it ended meanwhile
        self._watch.gave_up("reset an HTTP/2 stream", reason)
        with contextlib.suppress(ProtocolError):  # closed by the client meanwhile
            protocol.connection.reset_stream(stream_id, error_code=ErrorCodes.CANCEL)
        await protocol._close_stream(stream_id)  # its app is told its client is gone
        await self._buffer.close()  # what the app waits on ends; what it still sends is dropped
        await protocol._window_updated(stream_id)  # the send task lets go of buffer and node
        await protocol._flush()


CAP_ATTRIBUTE = "foundry_connection_cap"


def cap_connections(config: Any, cap: ConnectionCap) -> None:
    """Hold the listener served with hypercorn ``config`` to ``cap`` (once
    :func:`contain_connection_errors` is installed: its wrapper reads the cap)."""
    setattr(config, CAP_ATTRIBUTE, cap)


def _first_leaf(exc: BaseException) -> BaseException:
    """What a group of the connection's task errors holds (its first), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
