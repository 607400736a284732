"""Request/reply over trio memory channels: the only way actors talk to each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from .errors import Unavailable

T = TypeVar("T")
M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Reply(Generic[T]):
    """The one-shot answer channel a request carries. Answer it exactly once."""

    channel: trio.MemorySendChannel[Any]

    def send(self, value: T) -> None:
        self._put(value)

    def fail(self, error: BaseException) -> None:
        self._put(_Failure(error))

    def _put(self, item: Any) -> None:
        try:
            self.channel.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the asker gave up (its RPC was cancelled); nobody is waiting
        self.channel.close()


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


class Pending(Generic[T]):
    """The asker's end of a Reply; ``await wait()`` as often as you like."""

    __slots__ = ("_channel", "_done", "_value")

    def __init__(self, channel: trio.MemoryReceiveChannel[Any]) -> None:
        self._channel = channel
        self._done = False
        self._value: Any = None

    async def wait(self) -> T:
        if not self._done:
            try:
                self._value = await self._channel.receive()
            except trio.EndOfChannel:
                self._value = _Failure(Unavailable("the daemon stopped before answering"))
            self._done = True
            self._channel.close()
        if isinstance(self._value, _Failure):
            raise self._value.error
        result: T = self._value
        return result


def reply_pair() -> tuple[Reply[Any], Pending[Any]]:
    send, receive = trio.open_memory_channel[Any](1)
    return Reply(send), Pending(receive)


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
    return await pending.wait()
