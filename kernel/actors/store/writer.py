"""One long-lived thread for the store's journal appends.

``trio.to_thread.run_sync`` costs the trio thread ~140 µs a call on this machine (a capacity
limiter, a context copy, the thread cache's handoff); a thread of our own fed by a queue, which
reschedules the waiting task through the trio token, costs ~70 µs — and the journal takes one
call per group commit, on the path of every acknowledgement.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")

_Job = tuple[Callable[[], Any], Callable[[outcome.Outcome[Any]], None]] | None


class WriterThread:
    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

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
        while (job := self._jobs.get()) is not None:
            work, finished = job
            finished(outcome.capture(work))
            del job, work, finished  # a write's records are not held until the next one comes
