"""Messages the tap broker accepts, and what subscribers receive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from foundry.kernel.actors.mailbox import Reply


class Tappable(Protocol):
    """Anything published: it names its topic and the key subscribers filter on."""

    @property
    def tap_topic(self) -> str: ...

    @property
    def tap_key(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Publish:
    """Committed items to fan out, in order."""

    items: tuple[Tappable, ...]


class Sink(Protocol):
    """Where a subscriber's items go. The broker offers each item; a sink refuses (False) when it
    is closed, or full — then it has taken an :class:`Overflow` as its last item.

    ``offer`` and ``close`` run in the broker's call stack: they must only store the item and
    signal the sink's reader (wake its task), never wait or write to a connection — the reader
    does that in its own task.
    """

    def offer(self, item: Any, capacity: int) -> bool: ...

    def close(self) -> None: ...

    @property
    def closed(self) -> bool:
        """The subscription is over (its reader closed it, or the broker did): the broker
        forgets it."""
        ...


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe to ``topic``; ``key`` None means every key (e.g. every project).

    With no ``sink`` the broker makes a trio channel and answers with its receiving end.
    """

    topic: str
    key: str | None
    reply: Reply[Any]
    sink: Sink | None = None


@dataclass(frozen=True, slots=True)
class CloseAll:
    """Shutdown: end every subscription cleanly."""


@dataclass(frozen=True, slots=True)
class Overflow:
    """The last item a subscriber gets when it fell behind and was cut off: more than
    ``buffered`` items behind, or (``payload_bytes`` not 0) holding more than that many bytes
    of payloads waiting."""

    buffered: int
    payload_bytes: int = 0


TapMessage = Publish | Subscribe | CloseAll
