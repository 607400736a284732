"""The seam between the edges' handlers and the trio actors.

Two kinds of caller ask the actors: grpclib's handlers run on asyncio (trio-asyncio's loop), the
HTTP edge's (hypercorn's trio worker) run in trio tasks. Both share the actors' thread, so a
handler puts its request straight into an actor's mailbox and waits on a reply slot of its own
world — an asyncio future, or a trio event — that the actor's answer resolves: no task and no
trio-asyncio hop per call (a ``trio_as_aio`` hop costs ~190 µs here; the asyncio path ~75 µs).
Which world a caller is in is asked of ``sniffio`` (~0.2 µs; it answers "asyncio" inside
trio-asyncio's tasks).

A Watch subscription (:class:`QueueSink`) and a TapRun subscription (:class:`StreamSink`) only
store what the broker offers and wake their reader, in whichever world it waits; the reader's
task frames and writes it. The broker never writes to a connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Literal, TypeVar

import sniffio
import trio
import trio_asyncio
from foundry.kernel.actors.mailbox import Abandonable, Reply, unwrap
from foundry.kernel.actors.tap.messages import Overflow
from foundry.kernel.edge.worker_threads import in_edge_thread
from foundry.kernel.errors import Unavailable

T = TypeVar("T")
M = TypeVar("M")

_END: Any = object()
_EMPTY: Any = object()


def on_trio() -> bool:
    """Whether the running task is a trio task (the HTTP edge), not an asyncio one (grpclib)."""
    return sniffio.current_async_library() == "trio"


async def let_others_run() -> None:
    """Give the loop's other work a turn, from a handler of either edge, between the chunks of
    a long piece of work (a large reply built and encoded). From asyncio, a trip through trio
    (~190 µs): ``asyncio.sleep(0)`` would only queue the handler behind the asyncio callbacks
    already ready, which run in one batch (``internals.batch_ready_callbacks``) before trio's
    tasks get a turn."""
    if on_trio():
        await trio.lowlevel.checkpoint()
    else:
        await trio_asyncio.trio_as_aio(trio.lowlevel.checkpoint)()


async def in_worker_thread(work: Callable[..., T], *args: Any, heavy: bool = False) -> T:
    """``work(*args)`` on a worker thread, from a handler of either edge: a request's or reply's
    translation that would hold the loop (a Struct of 720,000 values made JSON: ~2.6 s of every
    other client waiting). The loop still gets the interpreter lock between its slices."""
    if on_trio():
        return await in_edge_thread(work, *args, heavy=heavy)
    done: T = await trio_asyncio.trio_as_aio(partial(in_edge_thread, work, *args, heavy=heavy))()
    return done


class FutureSlot(Abandonable):
    """An answer for an asker on the asyncio side (a gRPC handler): resolves its future.

    Actors and handlers share one thread under trio-asyncio, so setting the future is safe.
    """

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self._gone = None  # (Abandonable's, without a call: one per ask)
        self.future = future

    def put(self, item: Any) -> None:
        if not self.future.done():  # done: the RPC was cancelled
            self.future.set_result(item)


class TrioSlot(Abandonable):
    """An answer for an asker in a trio task (an HTTP handler): sets its event."""

    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self._gone = None  # (Abandonable's, without a call: one per ask)
        self.event = trio.Event()
        self.value: Any = _EMPTY

    def put(self, item: Any) -> None:
        if self.value is _EMPTY:  # a gone asker's answer is dropped with the slot
            self.value = item
            self.event.set()


async def ask_actor(mailbox: trio.MemorySendChannel[M], build: Callable[[Reply[T]], M]) -> T:
    """Send a request from a handler (asyncio or trio) and wait for the answer (errors are
    raised)."""
    if on_trio():
        return await _ask_from_trio(mailbox, build)
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    slot = FutureSlot(future)
    message = build(Reply(slot))
    try:
        try:
            mailbox.send_nowait(message)
        except trio.WouldBlock:  # a full mailbox: wait for room, in trio
            await trio_asyncio.trio_as_aio(mailbox.send)(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise Unavailable("the daemon is shutting down") from None
    try:
        answer = await future
    except asyncio.CancelledError:  # the call's deadline, its client gone, the stop's grace
        slot.give_up()
        raise
    result: T = unwrap(answer)
    return result


async def _ask_from_trio(mailbox: trio.MemorySendChannel[M], build: Callable[[Reply[T]], M]) -> T:
    slot = TrioSlot()
    message = build(Reply(slot))
    try:
        try:
            mailbox.send_nowait(message)
        except trio.WouldBlock:
            await mailbox.send(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise Unavailable("the daemon is shutting down") from None
    try:
        await slot.event.wait()
    except trio.Cancelled:
        slot.give_up()
        raise
    result: T = unwrap(slot.value)
    return result


class _Wakeup:
    """One reader waiting, in its own world: an asyncio future or a trio event, made when the
    reader waits (a sink may be made in one world and read in the other)."""

    __slots__ = ("_waiter",)

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | trio.Event | None = None

    async def wait(self) -> None:
        if on_trio():
            event = self._waiter = trio.Event()
            try:
                await event.wait()
            finally:
                self._waiter = None
            return
        future = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await future
        finally:
            self._waiter = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        if isinstance(waiter, trio.Event):
            waiter.set()
        elif not waiter.done():
            waiter.set_result(None)


# Payload bytes (an event's JSON) a subscriber may have waiting before it is cut off, beside its
# count of items: one Watch that never read held every event's payload — 100 events of 3.5 MB,
# 1.6 GB, and still 800 MB once idle (10,000 such events: tens of GB). And the bytes a batch
# takes at most (one item whatever its size), which the handler holds while the peer reads.
SINK_BYTES = 64 << 20
BATCH_BYTES = 8 << 20


def payload_bytes(item: Any) -> int:
    """What an item holds of its payload, as far as it says (an event's JSON text)."""
    text = getattr(item, "payload_json", None)
    return len(text) if isinstance(text, str) else 0


class QueueSink:
    """A subscription read by one handler task, asyncio or trio (see
    ``actors/tap/messages.Sink``)."""

    __slots__ = ("_items", "_closed", "_ended", "_wakeup", "_bytes")

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._closed = False
        self._ended = False
        self._wakeup = _Wakeup()
        self._bytes = 0  # payload bytes waiting

    def offer(self, item: Any, capacity: int) -> bool:
        if self._closed:
            return False
        size = payload_bytes(item)
        if len(self._items) >= capacity or (self._items and self._bytes + size > SINK_BYTES):
            too_large = len(self._items) < capacity
            self._items.append(Overflow(capacity, SINK_BYTES if too_large else 0))
            self.close()
            return False
        self._items.append(item)
        self._bytes += size
        self._wakeup.wake()
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._items.append(_END)
            self._wakeup.wake()

    @property
    def closed(self) -> bool:
        return self._closed

    async def batch(self, limit: int = 512) -> list[Any]:
        """What is waiting (at least one item, at most ``limit`` and about ``BATCH_BYTES``);
        [] once the subscription ended."""
        if self._ended:
            return []
        while not self._items:
            await self._wakeup.wait()
        items, taken = self._items, 0
        batch: list[Any] = []
        while items and len(batch) < limit and (not batch or taken < BATCH_BYTES):
            item = items.popleft()
            size = payload_bytes(item)
            taken += size
            self._bytes -= size
            batch.append(item)
        if batch[-1] is _END:
            self._ended = True
            batch.pop()
        return batch


Framer = Callable[[list[Any]], tuple[list[Any], bool]]
"""Items → (the messages to send — serialized or not, as the handler needs — and whether the
stream is complete after them)."""


class StreamSink:
    """A subscription whose handler sends what a framer makes of it (see ``tap_messages.Sink``).

    The broker only offers items: an offer appends to the backlog and wakes the handler (in its
    own world, asyncio or trio). The handler's :meth:`take` frames the whole backlog at once, for
    one write from the handler's own task; a backlog that grows past the capacity while the
    handler waits on the peer cuts the subscriber off (an :class:`Overflow`).
    """

    __slots__ = ("_framer", "_prepare", "_pending", "_closed", "_complete", "_overflow", "_wakeup")

    def __init__(
        self, framer: Framer, prepare: Callable[[list[Any]], Awaitable[None]] | None = None
    ) -> None:
        self._framer = framer
        self._prepare = prepare  # awaited before the backlog is framed (work off the loop)
        self._pending: list[Any] = []  # offered, not taken yet
        self._closed = False
        self._complete = False  # the framer has framed the last item
        self._overflow: Overflow | None = None
        self._wakeup = _Wakeup()

    def offer(self, item: Any, capacity: int) -> bool:
        if self._closed or self._complete:
            return False
        if len(self._pending) >= capacity:
            self._overflow = Overflow(capacity)
            self.close()
            return False
        self._pending.append(item)
        self._wakeup.wake()
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wakeup.wake()

    @property
    def closed(self) -> bool:
        return self._closed or self._complete

    async def take(self) -> tuple[list[Any], Literal["more", "end", "closed"] | Overflow]:
        """Wait for the backlog: the messages to send, then whether more may follow ("more"),
        the stream is complete ("end"), the broker closed the subscription before that
        ("closed": the daemon is stopping), or the subscriber fell behind (an
        :class:`Overflow`; nothing to send)."""
        while True:
            if self._overflow is not None:
                return [], self._overflow
            if self._pending:
                items, self._pending = self._pending, []
                if self._prepare is not None:
                    await self._prepare(items)
                messages, self._complete = self._framer(items)
                if messages or self._complete:
                    return messages, "end" if self._complete else "more"
                continue
            if self._complete:
                return [], "end"
            if self._closed:
                return [], "closed"
            await self._wakeup.wait()
