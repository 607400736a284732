"""Long-lived threads for work off the trio thread: the store's journal appends and analysts'
queries, the attestor's check of its signing process's signatures.

``trio.to_thread.run_sync`` costs the trio thread ~140 µs a call on this machine (a capacity
limiter, a context copy, the thread cache's handoff). A thread of our own takes its jobs from a
queue and answers through an eventfd that the waiting trio task watches: trio's own way back
(``run_sync_soon``) wakes its entry-queue task, which then reschedules the waiter — one more pass
of the loop per job, measured at ~20–30 µs, on the path of every group commit's acknowledgement.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import outcome
import trio


class JobThread:
    """One thread running jobs in order. Jobs may be queued (:meth:`submit`) while earlier ones
    run; :meth:`result` returns their outcomes in order, and only one task may wait in it at a
    time (each thread has one user: the store's commit loop, or a query that borrowed it, or the
    attestor).

    ``idle_priority``: the thread runs only when a core would otherwise be idle (analysts'
    queries: the daemon's loop, its journal and its clients come first on a busy machine)."""

    def __init__(self, name: str, *, idle_priority: bool = False) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._done: deque[outcome.Outcome[Any]] = deque()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._idle_priority = idle_priority
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # not Linux
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
        eventfd = self._read_fd == self._write_fd
        self._signal = (1).to_bytes(8, sys.byteorder) if eventfd else b"x"

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job`` (never blocks); its outcome comes from a later :meth:`result`."""
        self._jobs.put(job)

    async def result(self) -> Any:
        """The value of the oldest job not yet collected, once it has run (or its exception).
        Not cancellable (as with ``trio.to_thread.run_sync``): a write in progress is never
        abandoned. (No shielded scope on the way: entering one costs the trio thread ~5 µs, on
        the path of every commit; a cancellation waits shielded, and the caller's next
        checkpoint raises it, trio's cancellation being level-triggered.)"""
        try:
            while not self._done:
                await self._signalled()
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                while not self._done:
                    await self._signalled()
        return self._done.popleft().unwrap()

    async def wait(self) -> None:
        """Until a job's outcome is ready to collect, or :meth:`wake` was called (returns at once
        when one is ready; may return spuriously). Cancellable."""
        if not self._done:
            await self._signalled()

    def wake(self) -> None:
        """Make a task in :meth:`wait` return (from the trio thread): the store's idle commit
        loop waits here, so a commit the receiver hands to this thread wakes it only when it is
        done, with no pass of the loop in between."""
        os.write(self._write_fd, self._signal)

    async def _signalled(self) -> None:
        await trio.lowlevel.wait_readable(self._read_fd)
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 8)

    async def run(self, job: Callable[[], Any]) -> Any:
        """Run ``job`` and wait for it (nothing else may be waiting in :meth:`result`)."""
        self.submit(job)
        return await self.result()

    def stop(self) -> None:
        """Finish the jobs queued, then end the thread (blocking: call it off the trio thread)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        for fd in {self._read_fd, self._write_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _serve(self) -> None:
        if self._idle_priority:
            lowest_thread_priority()
        signal = self._signal
        while (job := self._jobs.get()) is not None:
            self._done.append(outcome.capture(job))
            del job  # a write's records are not held until the next one comes
            os.write(self._write_fd, signal)


def lowest_thread_priority() -> None:
    """The calling thread at ``SCHED_IDLE`` (Linux: per thread), else at nice 19 where that works;
    unchanged elsewhere."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
