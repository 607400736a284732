"""Replies the HTTP listener sends to clients that do not read them.

hypercorn hands a connection's bytes to its stream's ``send_all`` and waits, with no limit: a
client that asked for a large reply (a Connect ``GetRun`` of a run with big outputs: 51 MB) and
read none of it held the whole reply in the daemon's memory for as long as it kept the
connection open — 40 such sockets held 2.1 GB, and the connection cap allows 1,024. The
gRPC listener bounds the same thing at its flow-control window (``grpc/internals.py``,
``bound_unread_replies``); this is the HTTP listener's, at the socket.

A send goes out in pieces of ``PIECE`` bytes; each piece sent is progress. A send with no
progress for ``stall_timeout`` seconds (``[http] body_timeout``) is given up: the connection is
closed. One with none for ``STALLED_AFTER`` seconds is stalled, and what it has left counts;
while the stalled sends hold more than ``REPLY_BUDGET`` bytes in all, the largest is given up
first — its client read less than a piece for seconds.
What a WebSocket or a server stream pushes to a client that stopped reading ends the same way.

Other waits for a client are watched alike (:meth:`SendWatch.hold`): an HTTP/2 stream's reply
held back by the stream's flow-control window (``hypercorn_guard.bound_http2_streams``), the
socket moving all the while. Each says what it has left and since when it last moved, and how
it is given up: in a task of the watch's own (:meth:`SendWatch.soon`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from foundry.kernel.edge.connections import RecurringWarning

log = logging.getLogger("foundry.http")

PIECE = 65_536  # bytes handed to the socket at once: each one sent is progress
CLOSING_SECONDS = 1.0  # without progress, once the listener closes: the wait is given up
STALLED_AFTER = 5.0  # seconds without progress that make a send stalled (at most)
REPLY_BUDGET = 256 * 1024 * 1024  # bytes the stalled sends may hold in all (as gRPC's)
GIVEN_UP = RecurringWarning(log)
GIVE_UP_FAILED = RecurringWarning(log)


class SendGivenUp(trio.BrokenResourceError):
    """The client read too little of a reply for too long: its connection is closed."""


class Waiting(Protocol):
    """A wait for a client the watch looks at: bytes it has left, and when it last moved."""

    since: float

    @property
    def left(self) -> int: ...

    def give_up(self, reason: str) -> None: ...


class _Sending:
    __slots__ = ("left", "since", "scope", "reason")

    def __init__(self, left: int, now: float) -> None:
        self.left, self.since = left, now
        self.scope = trio.CancelScope()
        self.reason = ""

    def give_up(self, reason: str) -> None:
        self.reason = reason
        self.scope.cancel()


class SendWatch:
    """The sends of one listener that wait for their clients; :meth:`run` looks at them."""

    def __init__(
        self,
        stall_timeout: float,
        *,
        budget: int = REPLY_BUDGET,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.stall_timeout, self.budget, self._clock = stall_timeout, budget, clock
        self.stalled_after = min(STALLED_AFTER, stall_timeout / 2)
        self._sending: set[Waiting] = set()
        self._nursery: trio.Nursery | None = None  # :meth:`run`'s, for :meth:`soon`
        self._lead = 0.0  # how long ago a wait that moves now counts as moved (:meth:`closing`)
        self.given_up = 0  # sends given up since start

    def closing(self) -> None:
        """The listener closes: from now on a wait given up after ``CLOSING_SECONDS`` without
        progress, not ``stall_timeout``. hypercorn's sends cannot be cancelled (it shields
        them): a WebSocket client that read nothing held the daemon's stop for the whole
        ``[http] body_timeout`` (60 s), past its ``shutdown_grace``."""
        self._lead = max(self.stall_timeout - CLOSING_SECONDS, 0.0)
        moved = self.now()
        for waiting in self._sending:
            waiting.since = min(waiting.since, moved)

    async def send(self, stream: Any, data: bytes | bytearray | memoryview) -> None:
        """``stream.send_all(data)``, piece by piece, unless it is given up (SendGivenUp: the
        stream is then broken, in the middle of a piece)."""
        size = len(data)
        sending = _Sending(size, self.now())
        self._sending.add(sending)
        try:
            with sending.scope:
                if size <= PIECE:  # the common case: one piece, no slicing
                    await stream.send_all(data)
                else:
                    await self._in_pieces(stream, data, sending)
        finally:
            self._sending.discard(sending)
        if sending.scope.cancelled_caught:
            self.gave_up("closed an HTTP connection", sending.reason)
            raise SendGivenUp(f"the client {sending.reason}")

    def hold(self, waiting: Waiting) -> None:
        """Watch ``waiting`` (again) until :meth:`release`: it moves by its own account."""
        waiting.since = self.now()
        self._sending.add(waiting)

    def release(self, waiting: Waiting) -> None:
        self._sending.discard(waiting)

    def now(self) -> float:
        """The time a wait that moves now counts as having moved at (earlier once closing)."""
        return self._clock() - self._lead

    def gave_up(self, what: str, reason: str) -> None:
        self.given_up += 1
        GIVEN_UP.warning("%s whose client %s", what, reason)

    def soon(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job`` (a give-up's awaits) in a task of :meth:`run`'s; an error it raises is
        logged. Dropped when the watch does not run (the listener is closing)."""
        if self._nursery is not None:
            self._nursery.start_soon(_logged, job)

    async def _in_pieces(
        self, stream: Any, data: bytes | bytearray | memoryview, sending: _Sending
    ) -> None:
        size = len(data)
        with memoryview(data) as view:
            for start in range(0, size, PIECE):
                await stream.send_all(view[start : start + PIECE])
                sending.left, sending.since = max(size - start - PIECE, 0), self.now()

    def look(self) -> None:
        """Give up the sends stalled too long, then the largest stalled ones while they hold
        more than the budget."""
        now = self._clock()
        stalled: list[Waiting] = []
        for sending in list(self._sending):  # a given-up wait lets go of its place in it
            still = now - sending.since
            if still >= self.stall_timeout:
                self._sending.discard(sending)  # given up once
                sending.give_up(
                    f"read none of a reply for {CLOSING_SECONDS:g} s as the listener closed"
                    if self._lead
                    else f"read none of a reply for {self.stall_timeout:g} s ([http] body_timeout)"
                )
            elif still >= self.stalled_after + self._lead:  # (closing: moved back by the lead)
                stalled.append(sending)
        held = sum(s.left for s in stalled)
        for sending in sorted(stalled, key=lambda s: s.left, reverse=True):
            if held <= self.budget:
                break
            held -= sending.left
            self._sending.discard(sending)
            sending.give_up(f"read none of a reply for {self.stalled_after:g} s while "
                            f"unread replies held over {self.budget >> 20} MiB")  # fmt: skip

    async def run(self) -> None:
        """Look a few times a second, for ever."""
        every = min(1.0, self.stall_timeout / 4) if math.isfinite(self.stall_timeout) else 1.0
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                while True:
                    await trio.sleep(every)
                    self.look()
            finally:
                self._nursery = None


async def _logged(job: Callable[[], Awaitable[None]]) -> None:
    try:
        await job()
    except Exception as exc:  # a give-up must not end the watch, nor the listener with it
        GIVE_UP_FAILED.warning("could not give up a reply: %s: %s", type(exc).__name__, exc,
                               key=type(exc).__name__)  # fmt: skip
