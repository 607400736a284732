"""Trace files, written by a child process.

A trace file costs a handful of system calls. From a thread of the daemon each call must win the
interpreter lock back from the busy trio thread, which caps a thread at a few hundred files a
second (measured: 150–500 with the main thread busy). A child process has its own lock: the store
sends it a batch of framed files per group commit over a pipe, one write, off the ack path.

The database is the durable record; a trace file is its export. If the daemon dies before the
child has written a file, Trace rebuilds the document from the database.

The child runs ``trace_writer.py`` as a script.
"""

from __future__ import annotations

import subprocess
import sys

import trio

from . import trace_writer
from .trace_writer import FileWriter, frame

__all__ = ["Archivist", "FileWriter", "frame"]


class Archivist:
    """The parent's end: a child process that writes what it is sent."""

    def __init__(self) -> None:
        self._process: trio.Process | None = None
        self._fallback = FileWriter()

    async def start(self) -> None:
        self._process = await trio.lowlevel.open_process(
            [sys.executable, "-I", trace_writer.__file__], stdin=subprocess.PIPE
        )

    async def send(self, blob: bytes) -> None:
        if not blob:
            return
        process = self._process
        if process is not None and process.stdin is not None:
            try:
                await process.stdin.send_all(blob)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._process = None  # it died: write from a thread from now on
        await trio.to_thread.run_sync(self._fallback.write_all, blob)

    async def close(self) -> None:
        """Let the child write everything it was sent, then exit."""
        process, self._process = self._process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            with trio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
