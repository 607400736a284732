"""The seam between grpclib's handlers (asyncio) and the trio actors.

Under trio-asyncio both worlds share one thread, so a handler can put its request straight into
an actor's mailbox and wait on an asyncio future that the actor's reply resolves — no trio task
per call (a ``trio_as_aio`` hop costs ~190 µs here; this ~75 µs). Subscriptions deliver into an
asyncio queue, so a Watch or TapRun stream reads with no hop per item.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import trio
import trio_asyncio

from .errors import Unavailable
from .mailbox import FutureSlot, Reply, unwrap
from .tap_messages import Overflow

T = TypeVar("T")
M = TypeVar("M")

_END: Any = object()


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

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_END)

    async def batch(self, limit: int = 512) -> list[Any]:
        """What is waiting (at least one item, at most ``limit``); [] once the subscription ended."""
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
