"""How many connections each listener holds at once (``[daemon] max_connections``).

Every connection is a file descriptor, and so is every journal segment, DuckDB file, artifact
and child-process pipe the daemon opens. Without a cap, a client that opens connections until
``accept`` fails with EMFILE left the daemon unable to open its own files, and asyncio and
hypercorn logged a traceback for each failed ``accept`` (60 MB of log a minute, measured). A
listener at its cap accepts a connection and closes it at once — the client sees the connection
end (gRPC: UNAVAILABLE) — and logs one line a burst.

The gRPC listener counts at its socket (:func:`capped_listener`): asyncio accepts with the
listening socket's ``accept``, which here refuses a connection over the cap (closed before any
TLS handshake or HTTP/2 byte) and hands out sockets whose ``close`` counts their end — below
TLS, so a handshake that never finishes still ends its count (counted above TLS, it never did,
and each port scan used a place up for good). hypercorn's listener counts per connection it
serves (``http/hypercorn_guard.py``), its TLS handshake included.

At start (:func:`connection_budget`) the soft limit on open files is raised as far as the caps
need (up to the hard limit), and the cap is lowered, with a log line, if both listeners at the
cap would leave fewer than ``RESERVED_FDS`` descriptors for the daemon's own files.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import h2.events

log = logging.getLogger("foundry.daemon")

DEFAULT_MAX_CONNECTIONS = 1_024  # per listener
RESERVED_FDS = 512  # the daemon's own files: DuckDB, journal, spool, artifacts, child pipes
MINIMUM_CAP = 16
LISTENERS = 2  # gRPC and HTTP
WARN_EVERY = 10.0  # seconds between two "at its cap" lines of a listener


class ConnectionCap:
    """The live connections of one listener, against its cap. Not thread-safe: each listener
    counts on its event loop (the trio thread)."""

    def __init__(self, limit: int, listener: str) -> None:
        self.limit, self.listener = limit, listener
        self.live = 0
        self.refused = 0
        self._warned_at = -WARN_EVERY

    def admit(self) -> bool:
        """Count a new connection in; False (and counted as refused) when at the cap."""
        if self.live >= self.limit:
            self.refused += 1
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning("the %s listener holds %d connections, its cap ([daemon] "
                            "max_connections): new ones are closed at once (%d so far)",
                            self.listener, self.live, self.refused)  # fmt: skip
            return False
        self.live += 1
        return True

    def release(self) -> None:
        self.live -= 1


class _CappedListener(socket.socket):
    """A listening socket whose ``accept`` counts connections against a cap (see the module)."""

    _cap: ConnectionCap

    def accept(self) -> tuple[socket.socket, Any]:
        fd, address = self._accept()  # type: ignore[attr-defined]  # socket.socket's own
        if not self._cap.admit():
            os.close(fd)
            # asyncio's accept loop takes this as "nothing more to accept" for this wake-up
            raise ConnectionAbortedError("over the listener's cap ([daemon] max_connections)")
        conn = _CountedSocket(self.family, self.type, self.proto, fileno=fd)
        conn._cap = self._cap
        return conn, address


class _CountedSocket(socket.socket):
    """An accepted connection: its first ``close`` ends its count."""

    _cap: ConnectionCap | None = None

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
        super().close()


def capped_listener(sock: socket.socket, cap: ConnectionCap) -> socket.socket:
    """``sock`` (a bound, listening socket, left detached: use only what this returns) as one
    whose accepted connections are counted against ``cap``."""
    listener = _CappedListener(sock.family, sock.type, sock.proto, fileno=sock.detach())
    listener._cap = cap
    listener.setblocking(False)
    return listener


def connection_budget(requested: int) -> int:
    """The cap each listener gets: ``requested``, unless the open-files limit (its soft limit
    raised first, up to the hard one) leaves too few descriptors beside ``LISTENERS`` × it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = LISTENERS * requested + RESERVED_FDS
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    fits = max(MINIMUM_CAP, (soft - RESERVED_FDS) // LISTENERS)
    if requested > fits:
        log.warning("[daemon] max_connections %d lowered to %d: the open-files limit is %d "
                    "(ulimit -n)", requested, fits, soft)  # fmt: skip
        return fits
    return requested


# --- control frame floods ------------------------------------------------------------------------

# HTTP/2 control frames a connection may send: a burst, then a rate. Each costs the daemon work
# on its one thread (a PING or SETTINGS an answer too): four connections flooding them slowed
# every other client's calls from 3 ms to 1-4 s (CVE-2019-9512, -9515). Clients send a few a
# minute (keepalive PINGs, a SETTINGS at start), grpc-core's window probes a few a round trip.
CONTROL_BURST = 2_000
CONTROL_RATE = 200.0  # a second
# Streams a peer may reset (RST_STREAM) at once, and a second after: each reset stream's task
# had already been made (HTTP/2 "rapid reset", CVE-2023-44487: three connections opening and
# resetting streams for 10 s, ~6,600 a second each, ran a gRPC listener up to 2.5 GB and
# starved its clients). Well above what a client cancelling its own calls sends: grpcio resets
# each call whose deadline passes (200 at once cut off a client's other calls).
RESET_BURST = 2_000
RESET_RATE = 1_000.0
# WINDOW_UPDATE frames a peer may send at once, and a second after. A client sends them as it
# reads what the daemon sent: Node, reading a large reply with its 64 KiB windows, ~5,000 a
# second; grpc-core and browsers, with windows of megabytes, far fewer. 10,000 a second is
# 160 MB/s read 16 KB at a time. One connection sending them back to back (~170,000 a second)
# took a core of the daemon and slowed every other client's calls to 0.5-0.7 s.
WINDOW_BURST = 20_000
WINDOW_RATE = 10_000.0


def control_frames(events: Sequence[Any]) -> int:
    """How many of h2's ``events`` a peer's control frame made (PING, SETTINGS, PRIORITY, a
    frame of a type HTTP/2 does not define, an empty DATA frame that does not end its stream:
    CVE-2019-9518) — not the priority a request's HEADERS carries (h2 makes it an event too;
    browsers set it on every request)."""
    control = [
        event
        for event in events
        if isinstance(event, _CONTROL_EVENTS)
        or (type(event) is h2.events.DataReceived and not event.data and not event.stream_ended)
    ]
    if not any(isinstance(event, h2.events.PriorityUpdated) for event in control):
        return len(control)  # (most feeds: no request priority to tell apart)
    requested = {
        id(event.priority_updated)
        for event in events
        if isinstance(event, h2.events.RequestReceived) and event.priority_updated is not None
    }
    return sum(1 for event in control if id(event) not in requested)


def peer_resets(events: Sequence[Any]) -> int:
    """How many streams were reset among h2's ``events``: by the peer (RST_STREAM), or by h2
    for a frame the peer sent where none may go ("MadeYouReset", CVE-2025-8671: a whole request,
    then a DATA frame on its half-closed stream — each a handler started then cancelled, never
    counted: 540,000 in 30 s ran the daemon to 1.5 GB and its clients' calls to 10 s)."""
    return sum(1 for e in events if type(e) is h2.events.StreamReset)


def window_updates(events: Sequence[Any]) -> int:
    """How many WINDOW_UPDATE frames the peer sent among h2's ``events``."""
    return sum(1 for e in events if type(e) is h2.events.WindowUpdated)


# (state key, counter, burst, rate, what the warning names)
_BUDGETS = (
    ("foundry_control", control_frames, CONTROL_BURST, CONTROL_RATE,
     "control frames (PING, SETTINGS, PRIORITY, unknown or empty frames)"),
    ("foundry_resets", peer_resets, RESET_BURST, RESET_RATE, "stream resets"),
    ("foundry_windows", window_updates, WINDOW_BURST, WINDOW_RATE, "WINDOW_UPDATE frames"),
)  # fmt: skip


def flooded(state: dict[str, Any], events: Sequence[Any]) -> str | None:
    """What the peer flooded a connection with, by ``events`` (h2's, of the bytes just read),
    spending its budgets kept in ``state`` (the connection object's ``__dict__``); None while
    it keeps within them. Both listeners close such a connection (GOAWAY ENHANCE_YOUR_CALM):
    the HTTP one counted only control frames, so a rapid reset (CVE-2023-44487) kept the daemon
    busy for minutes after its peer had gone."""
    for key, count, burst, rate, what in _BUDGETS:
        frames = count(events)
        if frames:
            now = time.monotonic()
            budget = state.get(key)
            if budget is None:
                budget = state[key] = ControlFrames(now, burst, rate)
            if not budget.spend(frames, now):
                return what
    return None


class ControlFrames:
    """A connection's budget of control frames (a token bucket: ``burst`` at once, ``rate`` a
    second after)."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, now: float, burst: int = CONTROL_BURST, rate: float = CONTROL_RATE) -> None:
        self._tokens, self._at, self._burst, self._rate = float(burst), now, burst, rate

    def spend(self, frames: int, now: float) -> bool:
        """Take ``frames`` at ``now`` (seconds); False once the peer has sent more than its
        budget: a flood, whose connection is closed."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        self._tokens -= frames
        return self._tokens >= 0


class RecurringWarning:
    """A warning a client can cause once a connection, logged at most once a ``every`` seconds
    per ``key`` (say, an error's type) with how many were held back since (a log line each was
    one more way to fill the disk: a client opening bad connections in a loop wrote one per
    connection)."""

    KEYS = 32  # distinct keys kept apart; any further key shares one period

    def __init__(
        self,
        logger: logging.Logger,
        every: float = WARN_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._every, self._clock = logger, every, clock
        self._last: dict[str, tuple[float, int]] = {}  # key: (logged at, held back since)

    def warning(self, message: str, *args: Any, key: str = "") -> None:
        if key not in self._last and len(self._last) >= self.KEYS:
            key = ""
        now = self._clock()
        warned, held = self._last.get(key, (-math.inf, 0))
        if now - warned < self._every:
            self._last[key] = (warned, held + 1)
            return
        if held:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, held, now - warned)
        self._last[key] = (now, 0)
        self._log.warning(message, *args)


class FloodWarnings:
    """One log line a ``WARN_EVERY`` seconds for the connections closed for a flood."""

    def __init__(self, listener: str) -> None:
        self._listener, self._closed = listener, 0
        self._warning = RecurringWarning(log)

    def closed(self, what: str = _BUDGETS[0][4]) -> None:
        self._closed += 1
        self._warning.warning("the %s listener closed a connection that flooded it with HTTP/2 "
                              "%s: %d so far", self._listener, what, self._closed)  # fmt: skip


_CONTROL_EVENTS = (
    h2.events.PingReceived,
    h2.events.PingAckReceived,
    h2.events.RemoteSettingsChanged,
    h2.events.PriorityUpdated,
    h2.events.UnknownFrameReceived,
)
