"""The seam between grpclib's handlers (asyncio) and the trio actors.

Under trio-asyncio both worlds share one thread, so a handler can put its request straight into
an actor's mailbox and wait on an asyncio future that the actor's reply resolves — no trio task
per call (a ``trio_as_aio`` hop costs ~190 µs here; this ~75 µs). A Watch subscription delivers
into an asyncio queue, so its stream reads with no hop per item; a TapRun subscription
(:class:`StreamSink`) collects what the broker offers and wakes its handler, whose task frames
it and writes it. The broker never writes to a connection.
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
    """A subscription read from the asyncio side (see ``actors/tap/messages.Sink``)."""

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


Framer = Callable[[list[Any]], tuple[list[bytes], bool]]
"""Items → (the serialized messages to send, whether the stream is complete after them)."""


class StreamSink:
    """A subscription whose handler sends serialized messages (see ``tap_messages.Sink``).

    The broker only offers items: an offer appends to the backlog and wakes the handler (it
    resolves an asyncio future — broker and handlers share one thread under trio-asyncio). The
    handler's :meth:`take` frames the whole backlog at once, for one HTTP/2 write from the
    handler's own task; a backlog that grows past the capacity while the handler waits on the
    peer cuts the subscriber off (an :class:`Overflow`).
    """

    __slots__ = ("_framer", "_pending", "_closed", "_complete", "_overflow", "_waiter")

    def __init__(self, framer: Framer) -> None:
        self._framer = framer
        self._pending: list[Any] = []  # offered, not taken yet
        self._closed = False
        self._complete = False  # the framer has framed the last item
        self._overflow: Overflow | None = None
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, item: Any, capacity: int) -> bool:
        if self._closed or self._complete:
            return False
        if len(self._pending) >= capacity:
            self._overflow = Overflow(capacity)
            self.close()
            return False
        self._pending.append(item)
        self._wake()
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake()

    async def take(self) -> tuple[list[bytes], Literal["more", "end"] | Overflow]:
        """Wait for the backlog: the messages to send, then whether more may follow ("more"),
        the stream is complete ("end"), or the subscriber fell behind (an :class:`Overflow`;
        nothing to send)."""
        while True:
            if self._overflow is not None:
                return [], self._overflow
            if self._pending:
                items, self._pending = self._pending, []
                messages, self._complete = self._framer(items)
                if messages or self._complete:
                    return messages, "end" if self._complete or self._closed else "more"
                continue
            if self._complete or self._closed:
                return [], "end"
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
