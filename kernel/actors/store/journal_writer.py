"""The journal's appends written by a child process: a durable write without the journal thread.

A write someone waits for (an Emit's reply, a mutator's lease, a PatchStep) is one journal
append and one ``fdatasync``. On the journal thread that append crossed the interpreter lock
three times: the thread waited for the busy trio thread to let it start, to let it go on after
``fdatasync`` returned, and the trio thread then heard of it at its next pass. Measured here on
the pause → patch → resume cycle: ~0.4 ms from handing an append over to its write starting,
~0.6 ms from its end to the store going on, against ~0.3 ms of ``fdatasync``. Behind a trio
thread that never idles (a loaded daemon) each of those waits is a switch interval (5 ms): a
mutator chain beside a task that keeps the loop busy took 26–401 ms a step through the thread,
3–8 ms through the child (``bench/run_overhead.py``, ``chain_mut_busy``). A child process
has an interpreter lock of its own: the trio thread encodes a small group itself, sends the
record to the child (one ``sendmsg``, no wait) and goes on with other work while the child writes
and syncs it; the child's answer wakes the commit loop like any socket.

The journal (``journal.Journal``) still decides everything: a record's seq and offset
(:meth:`~journal.Journal.prepare`), when it is durable (:meth:`~journal.Journal.appended`), new
segments and the zeros written ahead of appends (those go on the journal thread, as a large
group does). The child (``writer_process.py``) only writes and syncs bytes into a segment
whose descriptor it is handed.

A daemon killed with ``kill -9`` closes the socket: the child ends after the append it is in
(never acknowledged, so a torn or whole record is the same to recovery). So that it cannot
write into a journal a new daemon is already reading, the child holds the journal's writer lock
(``journal/writer.lock``, passed as an open descriptor): a new store waits for it before it
reads the journal (:func:`hold_writer_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import sys
import time
from pathlib import Path

import trio
from foundry.kernel.actors.store.journal import PreparedAppend
from foundry.kernel.actors.store.writer_process import APPEND, HEAD, REPLY, SEGMENT
from foundry.kernel.errors import ConfigError

log = logging.getLogger("foundry.store")

PROGRAM = Path(__file__).with_name("writer_process.py")
LOCK_NAME = "writer.lock"
# An append larger than this goes through the journal thread (a datagram this size always fits
# the socket's buffer; encoding a larger group would hold the trio thread too long anyway).
MAX_BYTES = 64 << 10
LOCK_SECONDS = 10.0  # for the writer process of a daemon that died to end
EXIT_SECONDS = 5.0  # a writer process that does not end this long after its socket closed


class WriterLocked(ConfigError):
    """The journal's writer lock is held by a writer that did not end."""


class WriterGone(Exception):
    """The writer process ended or broke its protocol: the journal thread appends instead."""


def hold_writer_lock(directory: Path, timeout: float = LOCK_SECONDS) -> int:
    """Open and lock ``directory/writer.lock`` (exclusive), waiting up to ``timeout`` seconds
    for a writer process left by a daemon that died; the open descriptor (blocking: call it
    off the trio thread). Raises :class:`WriterLocked` naming the file (the daemon refuses to
    start with that one line)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise WriterLocked(
                    f"{path}: still locked by another journal writer after {timeout:g} s (a "
                    "writer process of a daemon on this home that has not ended: stop it)"
                ) from None
            time.sleep(0.01)


class WriterProcess:
    """The daemon's end: :meth:`start`, then per append :meth:`send` and :meth:`acknowledged`
    (one append in flight at a time: the store commits one group after another)."""

    def __init__(self, process: trio.Process, channel: socket.socket) -> None:
        self._process, self._channel = process, channel
        self._segment: int | None = None  # the generation of the segment the child writes to

    @classmethod
    async def start(cls, lock_fd: int) -> WriterProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with contextlib.suppress(OSError):
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MAX_BYTES)
            process = await trio.lowlevel.open_process(
                [sys.executable, "-I", str(PROGRAM), str(theirs.fileno())],
                pass_fds=(theirs.fileno(), lock_fd),
                start_new_session=True,  # its stop is ours: closing the socket, not Ctrl-C
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(process, ours)

    @property
    def pid(self) -> int:
        return self._process.pid

    def send(self, prepared: PreparedAppend) -> bool:
        """Hand the child ``prepared`` (its segment first, if new to it); False when it does
        not fit a message (the caller appends it on the journal thread). Never blocks."""
        if len(prepared.header) + len(prepared.payload) > MAX_BYTES:
            return False
        try:
            if self._segment != prepared.segment:
                socket.send_fds(self._channel, [HEAD.pack(SEGMENT, 0)], [prepared.fd])
                self._segment = prepared.segment
            head = HEAD.pack(APPEND, prepared.offset)
            self._channel.sendmsg([head, prepared.header, prepared.payload])
        except BlockingIOError:  # never expected: one append in flight, a buffer of four
            return False
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return False
            raise WriterGone(f"the writer process is gone ({exc})") from None
        return True

    async def acknowledged(self) -> None:
        """Wait for the child's answer to the append sent: returns once it is durable; raises
        OSError (the child's errno: the bytes are zeros again) or :class:`WriterGone`. Not
        cancellable, like the journal thread's appends: a write in progress is never abandoned
        (a cancellation waits shielded; the caller's next checkpoint raises it)."""
        try:
            reply = await self._reply()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                reply = await self._reply()
        if len(reply) != REPLY.size:
            raise WriterGone(f"the writer process ended (exit status {self._process.poll()})")
        (code,) = REPLY.unpack(reply)
        if code:
            raise OSError(code, f"journal append: {os.strerror(code)}")

    async def _reply(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._channel)
            try:
                return self._channel.recv(REPLY.size)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    async def close(self) -> None:
        """Close the socket (the child ends), wait for it (killed after ``EXIT_SECONDS``)."""
        with trio.CancelScope(shield=True):
            self._channel.close()
            with trio.move_on_after(EXIT_SECONDS):
                await self._process.wait()
                return
            log.warning("the journal's writer process did not end; killing it")
            self._process.kill()
            await self._process.wait()
