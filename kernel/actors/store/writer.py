"""One long-lived thread for work off the trio thread (the store's analysts' queries).

``trio.to_thread.run_sync`` costs the trio thread ~140 µs a call on this machine (a capacity
limiter, a context copy, the thread cache's handoff); a thread of our own fed by a queue, which
reschedules the waiting task through the trio token, costs ~70 µs. (The journal's appends have a
thread of their own that answers through an eventfd: ``journal.JournalThread``.)
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]] | None


class WriterThread:
    """``idle_priority``: the thread runs only when a core would otherwise be idle (analysts'
    queries: the daemon's loop, its journal and its clients come first on a busy machine)."""

    def __init__(self, name: str, *, idle_priority: bool = False) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._idle_priority = idle_priority

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the jobs queued, then end the thread (blocking: call it off the trio thread)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    async def run(self, job: Callable[[], T]) -> T:
        """Run ``job`` on the thread; the caller waits, and cannot be cancelled meanwhile (as
        with ``trio.to_thread.run_sync``: a write in progress is never abandoned)."""
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def finished(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((job, finished))
        result: T = await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def _serve(self) -> None:
        if self._idle_priority:
            lowest_thread_priority()
        while (job := self._jobs.get()) is not None:
            work, finished = job
            finished(outcome.capture(work))
            del job, work, finished  # a write's records are not held until the next one comes


def lowest_thread_priority() -> None:
    """The calling thread at ``SCHED_IDLE`` (Linux: per thread), else at nice 19 where that works;
    unchanged elsewhere."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
