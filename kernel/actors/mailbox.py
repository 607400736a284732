"""Request/reply over trio memory channels: the only way actors talk to each other."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio
from foundry.kernel.errors import FoundryError, InvalidArgument, Unavailable

T = TypeVar("T")
M = TypeVar("M")


class Slot(Protocol):
    """Where an answer goes: ``put`` is called once, from the actor's thread, never blocking."""

    def put(self, item: Any) -> None: ...


class Abandonable:
    """A slot whose asker may say it stopped waiting (:meth:`give_up`, when its call is
    cancelled), for an actor doing work for that asker alone (:meth:`Reply.wait_asker_gone`).
    The event is made only when either side needs it: most answers come before anyone asks."""

    __slots__ = ("_gone",)

    def __init__(self) -> None:
        self._gone: trio.Event | None = None

    def give_up(self) -> None:
        if self._gone is None:
            self._gone = trio.Event()
        self._gone.set()

    async def wait_gone(self) -> None:
        if self._gone is None:
            self._gone = trio.Event()
        await self._gone.wait()


class _Slot(Abandonable):
    """One answer and the event that announces it (cheaper than a memory channel per request)."""

    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self._gone = None  # (Abandonable's, without a call: one per ask)
        self.event = trio.Event()
        self.value: Any = _EMPTY

    def put(self, item: Any) -> None:
        # Nobody waiting (the asker gave up) is fine: the value is simply dropped with the slot.
        if self.value is _EMPTY:
            self.value = item
            self.event.set()


class NoticeSlot:
    """An answer delivered as a message ``(tag, answer)`` into the asker's own notice channel.

    For an actor that asks many times without a task waiting on each answer: its one notice
    loop takes the answers as they come. The channel is unbounded (the asker bounds how many
    questions it has open), so answering never blocks the answerer.
    """

    __slots__ = ("channel", "tag")

    def __init__(self, channel: trio.MemorySendChannel[tuple[Any, Any]], tag: Any) -> None:
        self.channel, self.tag = channel, tag

    def put(self, item: Any) -> None:
        # The asker stopped listening: the answer is dropped, as with a gone asker.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            self.channel.send_nowait((self.tag, item))


_EMPTY: Any = object()


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    """The one-shot answer a request carries. Answer it exactly once."""

    slot: Slot

    def send(self, value: T) -> None:
        self._put(value)

    def fail(self, error: BaseException) -> None:
        self._put(_Failure(error))

    async def wait_asker_gone(self) -> None:
        """Return once the asker stopped waiting for the answer (its call was cancelled: a
        client's deadline, a dropped connection); never, for an answer no task waits on. For
        work done for one asker alone, which it may then stop."""
        if isinstance(self.slot, Abandonable):
            await self.slot.wait_gone()
        else:
            await trio.sleep_forever()

    def abandon(self) -> None:
        """The actor stops without answering: the asker gets Unavailable."""
        self._put(_Failure(Unavailable("the daemon stopped before answering")))

    def _put(self, item: Any) -> None:
        self.slot.put(item)


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


def unwrap(item: Any) -> Any:
    """An answer's value, or its error raised."""
    if isinstance(item, _Failure):
        raise item.error
    return item


class Pending(Generic[T]):
    """The asker's end of a Reply; ``await wait()`` as often as you like."""

    __slots__ = ("_slot",)

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot

    async def wait(self) -> T:
        await self._slot.event.wait()  # a checkpoint even when already answered, like receive()
        value = self._slot.value
        if isinstance(value, _Failure):
            raise value.error
        result: T = value
        return result

    def give_up(self) -> None:
        """Nobody will wait for the answer any more (:meth:`Reply.wait_asker_gone`)."""
        self._slot.give_up()


def reply_pair() -> tuple[Reply[Any], Pending[Any]]:
    slot = _Slot()
    return Reply(slot), Pending(slot)


async def post(mailbox: trio.MemorySendChannel[M], build: Callable[[Reply[T]], M]) -> Pending[T]:
    """Send a request and return at once with the pending answer."""
    reply, pending = reply_pair()
    try:
        await mailbox.send(build(reply))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise Unavailable("the daemon is shutting down") from None
    return pending


async def ask(mailbox: trio.MemorySendChannel[M], build: Callable[[Reply[T]], M]) -> T:
    """Send a request and wait for its answer (an error answer is raised here)."""
    pending: Pending[T] = await post(mailbox, build)
    try:
        return await pending.wait()
    except trio.Cancelled:
        pending.give_up()  # (the actor may stop work done for this answer alone)
        raise


async def take_batch(channel: trio.MemoryReceiveChannel[M], limit: int) -> list[M]:
    """Wait for one message, then take those already waiting, up to ``limit`` in all: one
    scheduling pass for many messages (``receive`` is a checkpoint each). [] once it has ended."""
    try:
        batch = [await channel.receive()]
    except trio.EndOfChannel:
        return []
    while len(batch) < limit:
        try:
            batch.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


def refuse(message: object, error: Exception, log: logging.Logger) -> None:
    """An actor's answer to a message it failed on: the asker gets the error (or, for a message
    the actor does not know, a plain refusal), the log one line, and the actor goes on."""
    if isinstance(error, KeyError) and not isinstance(error, FoundryError):
        log.error("dropped a message of unknown type %s", type(message).__name__)
        error = InvalidArgument(f"unknown request {type(message).__name__}")
    elif not isinstance(error, FoundryError):
        log.error("a %s request failed", type(message).__name__, exc_info=error)
    reply = getattr(message, "reply", None)
    if isinstance(reply, Reply):
        reply.fail(error)


async def cancel_when(wait: Callable[[], Awaitable[object]], scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once ``wait`` returns: the first of several waits in one nursery ends
    them all (a run's end or its resume; a query's deadline, its asker gone, the store closing)."""
    await wait()
    scope.cancel()
