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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import trio
from foundry.kernel.edge.connections import RecurringWarning

log = logging.getLogger("foundry.http")

PIECE = 65_536  # bytes handed to the socket at once: each one sent is progress
STALLED_AFTER = 5.0  # seconds without progress that make a send stalled (at most)
REPLY_BUDGET = 256 * 1024 * 1024  # bytes the stalled sends may hold in all (as gRPC's)
GIVEN_UP = RecurringWarning(log)


class SendGivenUp(trio.BrokenResourceError):
    """The client read too little of a reply for too long: its connection is closed."""


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
        self._sending: set[_Sending] = set()
        self.given_up = 0  # sends given up since start

    async def send(self, stream: Any, data: bytes | bytearray | memoryview) -> None:
        """``stream.send_all(data)``, piece by piece, unless it is given up (SendGivenUp: the
        stream is then broken, in the middle of a piece)."""
        size = len(data)
        sending = _Sending(size, self._clock())
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
            self.given_up += 1
            GIVEN_UP.warning("closed an HTTP connection whose client %s", sending.reason)
            raise SendGivenUp(f"the client {sending.reason}")

    async def _in_pieces(
        self, stream: Any, data: bytes | bytearray | memoryview, sending: _Sending
    ) -> None:
        size = len(data)
        with memoryview(data) as view:
            for start in range(0, size, PIECE):
                await stream.send_all(view[start : start + PIECE])
                sending.left, sending.since = max(size - start - PIECE, 0), self._clock()

    def look(self) -> None:
        """Give up the sends stalled too long, then the largest stalled ones while they hold
        more than the budget."""
        now = self._clock()
        stalled: list[_Sending] = []
        for sending in self._sending:
            still = now - sending.since
            if still >= self.stall_timeout:
                sending.give_up(f"read none of a reply for {self.stall_timeout:g} s "
                                "([http] body_timeout)")  # fmt: skip
            elif still >= self.stalled_after:
                stalled.append(sending)
        held = sum(s.left for s in stalled)
        for sending in sorted(stalled, key=lambda s: s.left, reverse=True):
            if held <= self.budget:
                break
            held -= sending.left
            sending.give_up(f"read none of a reply for {self.stalled_after:g} s while "
                            f"unread replies held over {self.budget >> 20} MiB")  # fmt: skip

    async def run(self) -> None:
        """Look a few times a second, for ever."""
        every = min(1.0, self.stall_timeout / 4) if math.isfinite(self.stall_timeout) else 1.0
        while True:
            await trio.sleep(every)
            self.look()
