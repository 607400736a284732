"""The tap broker: fans committed items out to every Watch/TapRun subscriber.

Each subscriber has a bounded buffer. One that falls behind is cut off — it gets an
:class:`Overflow` as its last item — so a slow reader never stalls the kernel or misses items
silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .tap_messages import CloseAll, Overflow, Publish, Subscribe

TapMessage = Publish | Subscribe | CloseAll


@dataclass(slots=True)
class _Subscriber:
    key: str | None
    send: trio.MemorySendChannel[Any]


class TapBroker:
    def __init__(self, inbox: trio.MemoryReceiveChannel[TapMessage], *, buffer: int) -> None:
        self._inbox = inbox
        self._buffer = buffer
        self._topics: dict[str, list[_Subscriber]] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            Publish: self._publish,
            Subscribe: self._subscribe,
            CloseAll: self._close_all,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async with self._inbox:
                async for message in self._inbox:
                    self._handlers[type(message)](message)
        finally:
            self._close_all(CloseAll())

    def _subscribe(self, message: Subscribe) -> None:
        # One slot is kept for the Overflow notice.
        send, receive = trio.open_memory_channel[Any](self._buffer + 1)
        self._topics.setdefault(message.topic, []).append(_Subscriber(message.key, send))
        message.reply.send(receive)

    def _publish(self, message: Publish) -> None:
        for item in message.items:
            subscribers = self._topics.get(item.tap_topic)
            if subscribers:
                self._deliver(subscribers, item)

    def _deliver(self, subscribers: list[_Subscriber], item: Any) -> None:
        gone = []
        key = item.tap_key
        for sub in subscribers:
            if sub.key is not None and sub.key != key:
                continue
            try:
                if sub.send.statistics().current_buffer_used >= self._buffer:
                    sub.send.send_nowait(Overflow(self._buffer))
                    raise trio.BrokenResourceError
                sub.send.send_nowait(item)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                sub.send.close()
                gone.append(sub)
        for sub in gone:
            subscribers.remove(sub)

    def _close_all(self, _: CloseAll) -> None:
        for subscribers in self._topics.values():
            for sub in subscribers:
                sub.send.close()
        self._topics.clear()


async def receive_batch(receive: trio.MemoryReceiveChannel[Any], limit: int = 512) -> list[Any]:
    """Everything waiting on a subscription (at least one item, at most ``limit``); [] at its end.

    A subscriber drains in batches so one trio hop carries many items: group commits publish in
    bursts.
    """
    try:
        batch = [await receive.receive()]
    except (trio.EndOfChannel, trio.ClosedResourceError):
        return []
    while len(batch) < limit:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    return batch
