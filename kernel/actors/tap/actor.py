"""The tap broker: fans committed items out to every Watch/TapRun subscriber.

Each subscriber has a bounded buffer. One that falls behind is cut off — it gets an
:class:`Overflow` as its last item — so a slow reader never stalls the kernel or misses items
silently. The broker only offers items to a sink (:class:`~.messages.Sink`) and closes it; a
sink on the gRPC edge wakes its handler, whose task writes to the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from foundry.kernel.actors.mailbox import refuse
from foundry.kernel.actors.tap.buffered import buffered
from foundry.kernel.actors.tap.messages import (
    CloseAll,
    Overflow,
    Publish,
    Sink,
    Subscribe,
    TapMessage,
)

log = logging.getLogger("foundry.tap")

SWEEP_AT_LEAST = 64  # subscribers of a topic before the first sweep


class ChannelSink:
    """A trio memory channel as a sink (for trio-side subscribers)."""

    __slots__ = ("send",)

    def __init__(self, send: trio.MemorySendChannel[Any]) -> None:
        self.send = send

    def offer(self, item: Any, capacity: int) -> bool:
        try:
            if buffered(self.send) >= capacity:
                self.send.send_nowait(Overflow(capacity))  # the slot kept for the notice
                self.send.close()
                return False
            self.send.send_nowait(item)
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            self.send.close()
            return False

    def close(self) -> None:
        self.send.close()

    @property
    def closed(self) -> bool:
        try:
            return self.send.statistics().open_receive_channels == 0  # its reader is gone
        except trio.ClosedResourceError:
            return True


@dataclass(slots=True)
class _Subscriber:
    key: str | None
    sink: Sink


class TapBroker:
    def __init__(self, inbox: trio.MemoryReceiveChannel[TapMessage], *, buffer: int) -> None:
        self._inbox = inbox
        self._buffer = buffer
        self._topics: dict[str, list[_Subscriber]] = {}
        # A topic's subscribers are swept of those whose stream ended when their number has
        # doubled since the last sweep: an ended stream was held until an item with its key
        # came, and a TapRun of a finished run, a Watch of a quiet project never get one.
        self._sweep_at: dict[str, int] = {}
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
                    try:
                        self._handlers[type(message)](message)
                    except Exception as exc:  # one bad request never stops the broker
                        refuse(message, exc, log)
                    del message  # not held while waiting: its events' payloads may be large
        finally:
            self._close_all(CloseAll())

    def _subscribe(self, message: Subscribe) -> None:
        sink = message.sink
        answer: Any = None
        if sink is None:
            # One slot is kept for the Overflow notice.
            send, answer = trio.open_memory_channel[Any](self._buffer + 1)
            sink = ChannelSink(send)
        subscribers = self._topics.setdefault(message.topic, [])
        if len(subscribers) >= self._sweep_at.get(message.topic, SWEEP_AT_LEAST):
            subscribers[:] = [sub for sub in subscribers if not sub.sink.closed]
            self._sweep_at[message.topic] = max(SWEEP_AT_LEAST, 2 * len(subscribers))
        subscribers.append(_Subscriber(message.key, sink))
        message.reply.send(answer)

    def held(self, topic: str) -> int:
        """Subscribers of ``topic`` the broker holds (live ones, and ended ones not swept yet)."""
        return len(self._topics.get(topic, ()))

    def _publish(self, message: Publish) -> None:
        """Offer each item to its subscribers; a sink wakes its own reader, which does any
        writing in its own task — never here."""
        for item in message.items:
            subscribers = self._topics.get(item.tap_topic)
            if subscribers:
                self._deliver(subscribers, item)

    def _deliver(self, subscribers: list[_Subscriber], item: Any) -> None:
        key = item.tap_key
        gone = [
            sub
            for sub in subscribers
            if (sub.key is None or sub.key == key) and not sub.sink.offer(item, self._buffer)
        ]
        for sub in gone:
            subscribers.remove(sub)

    def _close_all(self, _: CloseAll) -> None:
        for subscribers in self._topics.values():
            for sub in subscribers:
                sub.sink.close()
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
