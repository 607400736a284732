"""Trace files, written by a child process.

A trace file costs a handful of system calls. From a thread of the daemon each call must win the
interpreter lock back from the busy trio thread, which caps a thread at a few hundred files a
second (measured: 150–500 with the main thread busy). A child process has its own lock: the store
queues a batch of framed files per group commit, and a task of its own feeds them to the child
over a pipe: the store never waits on the child's disk (unless it falls far behind).

The database is the durable record; a trace file is its export. If the daemon dies before the
child has written a file, Trace rebuilds the document from the database.

The child runs ``core/trace_format.py`` as a script.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys

import trio
from foundry.kernel.actors.mailbox import take_batch
from foundry.kernel.actors.pipes import widen
from foundry.kernel.core import trace_format
from foundry.kernel.core.trace_format import FileWriter, frame

__all__ = ["Archivist", "FileWriter", "frame"]

log = logging.getLogger("foundry.store")


class Archivist:
    """The parent's end: a queue of framed files, and a task that feeds them to a child process
    that writes them. The store hands over a commit's files without waiting for the child; it
    waits only when the child is ``backlog`` commits behind."""

    def __init__(self, backlog: int = 64) -> None:
        self._queue, self._pending = trio.open_memory_channel[bytes](backlog)
        self._fallback = FileWriter()
        self._restarted = False  # the child was started again once

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        process: trio.Process | None = await _start()
        task_status.started()
        try:
            async with self._pending:
                while blobs := await take_batch(self._pending, FEED_BATCH):
                    data = b"".join(blobs)
                    blobs.clear()  # not held while waiting for the next commit's files
                    process = await self._feed(process, data)
                    del data
        finally:
            with trio.CancelScope(shield=True):
                if process is not None:
                    await _stop(process)

    async def send(self, blob: bytes) -> None:
        """Queue a commit's framed files (see ``trace_format.frame``)."""
        if not blob:
            return
        try:
            self._queue.send_nowait(blob)
        except trio.WouldBlock:  # the child is far behind: wait for it
            await self._queue.send(blob)

    def close(self) -> None:
        """No more files: the run task feeds the child what is queued, then the child exits."""
        self._queue.close()

    async def _feed(self, process: trio.Process | None, blob: bytes) -> trio.Process | None:
        """One write to the child; if it has died, another is started (once: should that one
        die too, the files are written from a thread from then on — it was so at once, ~150-500
        files a second, for the rest of the daemon's life)."""
        if process is not None and process.stdin is not None:
            try:
                await process.stdin.send_all(blob)
                return process
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.CancelScope(shield=True):  # it ended: no zombie, no pipe left open
                    await _stop(process, grace=5)
                if not self._restarted:
                    self._restarted = True
                    log.warning("the trace file writer exited (code %s): started again",
                                process.returncode)  # fmt: skip
                    with contextlib.suppress(OSError):
                        return await self._feed(await _start(), blob)
                log.warning("the trace file writer exited again (code %s): trace files are "
                            "written from a thread", process.returncode)  # fmt: skip
        try:
            await trio.to_thread.run_sync(self._fallback.write_all, blob)
        except OSError as exc:  # a full disk: the trace is in the database, Trace reads it there
            log.error("could not write trace files (%s): Trace reads those chains from the "
                      "database", exc)  # fmt: skip
        return None


FEED_BATCH = 64  # commits' files joined into one write to the child


async def _start() -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-I", trace_format.__file__],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a terminal's Ctrl-C is for the daemon, who drains first
    )
    widen(process.stdin)  # a batch of commits' files is one write, not one per 64 KiB
    return process


async def _stop(process: trio.Process, grace: float = 30.0) -> None:
    """Let the child write everything it was sent, then exit (killed after ``grace`` s)."""
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(grace):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
