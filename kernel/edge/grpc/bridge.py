"""The seam between grpclib's handlers (asyncio) and the trio actors.

Under trio-asyncio both worlds share one thread, so a handler can put its request straight into
an actor's mailbox and wait on an asyncio future that the actor's reply resolves — no trio task
per call (a ``trio_as_aio`` hop costs ~190 µs here; this ~75 µs). A Watch subscription delivers
into an asyncio queue, so its stream reads with no hop per item; a TapRun subscription
(:class:`StreamSink`) is written onto its HTTP/2 stream by the broker itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import trio
import trio_asyncio
from foundry.kernel.actors.mailbox import Reply, unwrap
from foundry.kernel.actors.tap.messages import Overflow
from foundry.kernel.errors import Unavailable
from grpclib.server import Stream

T = TypeVar("T")
M = TypeVar("M")

_END: Any = object()


class FutureSlot:
    """An answer for an asker on the asyncio side (a gRPC handler): resolves its future.

    Actors and handlers share one thread under trio-asyncio, so setting the future is safe.
    """

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future

    def put(self, item: Any) -> None:
        if not self.future.done():  # done: the RPC was cancelled
            self.future.set_result(item)


async def ask_actor(mailbox: trio.MemorySendChannel[M], build: Callable[[Reply[T]], M]) -> T:
    """Send a request from the asyncio side and wait for the answer (errors are raised)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    message = build(Reply(FutureSlot(future)))
    try:
        mailbox.send_nowait(message)
    except trio.WouldBlock:  # a full mailbox: wait for room, in trio
        await trio_asyncio.trio_as_aio(mailbox.send)(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise Unavailable("the daemon is shutting down") from None
    result: T = unwrap(await future)
    return result


class QueueSink:
    """A subscription read from the asyncio side (see ``tap_messages.Sink``)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._ended = False

    def offer(self, item: Any, capacity: int) -> bool:
        if self._closed:
            return False
        if self._queue.qsize() >= capacity:
            self._queue.put_nowait(Overflow(capacity))
            self.close()
            return False
        self._queue.put_nowait(item)
        return True

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_END)

    async def batch(self, limit: int = 512) -> list[Any]:
        """What is waiting (at least one item, at most ``limit``); [] once the subscription
        ended."""
        if self._ended:
            return []
        items = [await self._queue.get()]
        while len(items) < limit and not self._queue.empty():
            items.append(self._queue.get_nowait())
        if items[-1] is _END:
            self._ended = True
            items.pop()
            if not items:
                return []
        return items


Framer = Callable[[list[Any]], tuple[bytes, bool]]
"""Items → (gRPC length-prefixed messages to send, whether the stream is complete after them)."""


class StreamSink:
    """A subscription written straight onto a server stream (see ``tap_messages.Sink``).

    While it is *direct*, the broker's :meth:`flush` — after each published batch — frames what
    was offered and writes it to the connection there and then: no asyncio task wakes up per
    subscriber per batch. The handler owns the stream otherwise: before :meth:`start` (while it
    sends the history), and whenever a direct write cannot go out at once (the peer's flow-control
    window or the transport's buffer is full); then :meth:`take` hands it the backlog to send the
    ordinary, awaiting way, and :meth:`start` makes the sink direct again.
    """

    def __init__(self, stream: Stream[Any, Any], framer: Framer) -> None:
        self._stream = stream
        self._framer = framer
        self._pending: list[Any] = []  # offered, not framed yet
        self._unsent: list[bytes] = []  # framed, for the handler to send
        self._unsent_items = 0
        self._direct = False
        self._closed = False
        self._complete = False  # the framer has framed the last item
        self._overflow: Overflow | None = None
        self._error: Exception | None = None  # raised by the framer in the broker's flush
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: Any, capacity: int) -> bool:
        if self._closed or self._complete:
            return False
        if len(self._pending) + self._unsent_items >= capacity:
            self._overflow = Overflow(capacity)
            self.close()
            return False
        self._pending.append(item)
        return True

    def flush(self) -> Callable[[], None] | None:
        """Frame what was offered and hand it to HTTP/2; the write to the connection is returned
        (one per connection, however many of its streams tap)."""
        if not self._pending:
            return None
        if not self._direct:
            self._wake()
            return None
        try:
            if self._write_pending():
                return self._stream._stream.connection.flush
        except Exception as exc:  # never into the broker: the handler raises it
            self._error = exc
            self.close()
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake()

    def start(self) -> None:
        """The handler is done with the stream: write directly from now on."""
        self._direct = True
        if self._pending and self._write_pending():
            self._stream._stream.connection.flush()

    async def take(self) -> tuple[bytes, Literal["more", "end"] | Overflow]:
        """Wait until the handler has to act: what to send, then whether more may follow ("more":
        send it and :meth:`start` again), the stream is complete ("end"), or the subscriber fell
        behind (an :class:`Overflow`; nothing to send)."""
        while True:
            if self._error is not None:
                raise self._error
            if self._overflow is not None:
                return b"", self._overflow
            if self._pending:  # not direct (or closed): the handler sends it
                self._frame_pending()
            if self._unsent:
                data = b"".join(self._unsent)
                self._unsent.clear()
                self._unsent_items = 0
                self._direct = False
                return data, "end" if self._complete or self._closed else "more"
            if self._complete or self._closed:
                return b"", "end"
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _frame_pending(self) -> None:
        items, self._pending = self._pending, []
        data, self._complete = self._framer(items)
        if data:
            self._unsent.append(data)
            self._unsent_items += len(items)

    def _write_pending(self) -> bool:
        """Frame the pending items and hand them to HTTP/2 if it can take them now (True: the
        connection has data to write); otherwise leave them to the handler."""
        self._frame_pending()
        sent = False
        if self._unsent:
            if not self._unsent[1:] and _send_now(self._stream, self._unsent[0]):
                self._unsent.clear()
                self._unsent_items = 0
                sent = True
            else:
                self._direct = False
                self._wake()
        if self._complete:
            self._wake()
        return sent


def _send_now(stream: Stream[Any, Any], data: bytes) -> bool:
    """Hand ``data`` to HTTP/2 as one DATA frame if flow control and the transport allow it right
    now; the caller writes the connection (grpclib's ``Connection.flush``).

    This is what grpclib's ``Stream.send_data`` does when it need not wait, minus the awaits.
    """
    h2stream = stream._stream
    h2, stream_id, size = h2stream._h2_connection, h2stream.id, len(data)
    try:
        if (
            stream_id is None
            or h2stream.connection.is_closing()
            or not h2stream.connection.write_ready.is_set()
            or size > h2.local_flow_control_window(stream_id)
            or size > h2.max_outbound_frame_size
        ):
            return False
        h2.send_data(stream_id, data)
    except Exception:  # e.g. the stream was reset: the handler's own send will see it too
        return False
    h2stream.data_sent += size
    h2stream.connection.data_sent += size
    h2stream.connection.data_send_process()
    return True
