"""Threads for work off the trio thread: long-lived ones for the store's journal appends and
analysts' queries, the attestor's check of its signing process's signatures; a pool for the
files executions write (:class:`ThreadPool`).

``trio.to_thread.run_sync`` costs the trio thread ~140 µs a call on this machine (a capacity
limiter, a context copy, the thread cache's handoff). A thread of our own takes its jobs from a
queue and answers through an eventfd that the waiting trio task watches: trio's own way back
(``run_sync_soon``) wakes its entry-queue task, which then reschedules the waiter — one more pass
of the loop per job, measured at ~20–30 µs, on the path of every group commit's acknowledgement.

A thread that needs the interpreter lock behind a trio thread that never idles (a loaded daemon)
can wait for it for seconds: each time the loop looks at its sockets it lets go of the lock and
takes it straight back, which restarts the waiting thread's switch-interval timer (CPython's
``take_gil``), so the thread gets the lock only if the loop holds it for a whole interval (5 ms)
at once. Measured: a 200-step mutator chain beside a task that computes 300 µs and yields, again
and again — 15–159 ms a step (one append handed to the journal thread waited 9.9 s); 1.7–1.9 ms
with a 0.1 ms interval. So while someone waits for a thread's work (a client's reply, a
mutator's lease, a read), the interval is 0.1 ms (:func:`waited_for`, ``submit(waited=True)``),
and work nobody waits for is hurried once it has been starved for ``STARVED_SECONDS``. Not
always: a short interval moves the threads' work nobody waits for (DuckDB catching up, the
journal's background groups) into the busy stretch itself — the attestation benchmark's run
took 6–9 points longer to ``run_succeeded`` with every late job hurried after 10 ms.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import outcome
import trio
from setproctitle import setthreadtitle

T = TypeVar("T")

# The switch interval while a thread's job is waited for: shorter than the loop's passes on a
# busy daemon (~0.2–0.3 ms), so a waiting thread's request to take the lock is not reset first.
WAITED_SWITCH_INTERVAL = 100e-6
# A job nobody waits for, not done after this long, is hurried from then on (a starved thread
# holds up every job after it: the store's commits, and so TapRun's events).
STARVED_SECONDS = 0.5


class _Waited:
    """How many thread jobs are waited for now, and the switch interval to go back to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # trio loops of several threads (tests) share the count
        self._count = 0
        self._usual = 0.0

    def begin(self) -> None:
        with self._lock:
            if self._count == 0:
                self._usual = sys.getswitchinterval()
                sys.setswitchinterval(min(self._usual, WAITED_SWITCH_INTERVAL))
            self._count += 1

    def end(self) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0:
                sys.setswitchinterval(self._usual)


_waited = _Waited()


@contextlib.contextmanager
def waited_for() -> Iterator[None]:
    """While a caller waits for work in a thread (a job, ``trio.to_thread.run_sync``): a short
    switch interval for the process, so that thread is not starved of the interpreter lock by
    a busy trio thread (the module's docstring). Process-wide, counted: the interval goes back
    when no such work is left."""
    _waited.begin()
    try:
        yield
    finally:
        _waited.end()


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``trio.to_thread.run_sync`` for work a caller waits for (:func:`waited_for`)."""
    with waited_for():
        return await trio.to_thread.run_sync(function, *args, **kwargs)


class ThreadPool:
    """Up to ``size`` threads running short blocking jobs for many trio tasks at once: the files
    executions write, the folders they scan.

    ``trio.to_thread.run_sync`` costs the trio thread 45–140 µs a call here (its capacity
    limiter, a context copy, the thread cache's handoff, and a pass of the entry-queue task per
    job); a job of this pool ~5 µs (measured: 30 tasks each running no-op jobs, 4 threads). On a
    busy loop the difference is latency too: each of those steps waits for the loop's turn, and
    the greeting chain's artifact writes, 96 Emits in flight, waited 2.5 s (p50) behind
    ``run_sync`` against 33 ms in this pool.

    The waiting task is parked, the job queued; a thread that finishes a job hands it back in
    one ``run_sync_soon`` for all the jobs finished meanwhile (per trio run: each has its own
    token), which reschedules every waiter at once. Jobs run without the caller's context
    variables. Threads start on demand and end after ``idle_seconds`` without work."""

    def __init__(self, name: str, size: int, *, idle_seconds: float = 10.0) -> None:
        self._name = name
        self._size = size
        self._idle_seconds = idle_seconds
        self._jobs: queue.SimpleQueue[_PoolJob] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # alive
        self._free = 0  # alive and not claimed by a job: below 0 while jobs queue
        self._finished: dict[trio.lowlevel.TrioToken, list[_Finished]] = {}

    @property
    def threads(self) -> int:
        """How many threads are alive."""
        return self._threads

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on one of the pool's threads: its value, or its exception. Not
        cancellable, as ``trio.to_thread.run_sync`` is not (a file half written is not
        abandoned): a cancellation comes at the caller's next checkpoint. Waited for
        (:func:`waited_for`) until it is back."""
        await trio.lowlevel.checkpoint_if_cancelled()
        with self._lock:
            start = self._free <= 0 and self._threads < self._size
            if start:
                self._threads += 1
                self._free += 1
            self._free -= 1
        if start:
            self._start_thread()
        task, token = trio.lowlevel.current_task(), trio.lowlevel.current_trio_token()
        _waited.begin()
        try:
            self._jobs.put((task, token, function, args))
            value: T = await trio.lowlevel.wait_task_rescheduled(_not_abortable)
            return value
        finally:
            _waited.end()

    def _start_thread(self) -> None:
        """A thread more, its place claimed already; given back if the system refuses one (the
        job then waits for a thread alive, or fails here when there is none)."""
        try:
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()
        except RuntimeError:
            with self._lock:
                self._threads -= 1
                none_alive = self._threads == 0
                if not none_alive:
                    self._free -= 1  # the job queues for a thread alive
            if none_alive:
                raise

    def _serve(self) -> None:
        name_os_thread(self._name)
        while True:
            try:
                task, token, function, args = self._jobs.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._free > 0:  # more threads free than jobs queued: this one goes
                        self._threads -= 1
                        self._free -= 1
                        return
                continue
            result = outcome.capture(function, *args)
            del function, args
            with self._lock:
                self._free += 1
                finished = self._finished.setdefault(token, [])
                finished.append((task, result))
                first = len(finished) == 1
            if first:  # the rest finished before it is delivered go along
                with contextlib.suppress(trio.RunFinishedError):  # nobody left to tell
                    token.run_sync_soon(self._deliver, token)

    def _deliver(self, token: trio.lowlevel.TrioToken) -> None:
        with self._lock:
            finished = self._finished.pop(token, [])
        for task, result in finished:
            trio.lowlevel.reschedule(task, result)


_PoolJob = tuple[trio.lowlevel.Task, trio.lowlevel.TrioToken, Callable[..., Any], tuple[Any, ...]]
_Finished = tuple[trio.lowlevel.Task, outcome.Outcome[Any]]


def _not_abortable(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


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
        self._waited: deque[bool] = deque()  # the jobs not collected: is each waited for?
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

    def submit(self, job: Callable[[], Any], *, waited: bool = False) -> None:
        """Queue ``job`` (never blocks); its outcome comes from a later :meth:`result`.
        ``waited``: someone waits for it (a client's reply, a mutator's lease): the switch
        interval is short until its outcome is collected (:func:`waited_for`)."""
        if waited:
            _waited.begin()
        self._waited.append(waited)
        self._jobs.put(job)

    async def result(self, *, hurry_after: float | None = STARVED_SECONDS) -> Any:
        """The value of the oldest job not yet collected, once it has run (or its exception).
        Not cancellable (as with ``trio.to_thread.run_sync``): a write in progress is never
        abandoned. (No shielded scope on the way: entering one costs the trio thread ~5 µs, on
        the path of every commit; a cancellation waits shielded, and the caller's next
        checkpoint raises it, trio's cancellation being level-triggered.) ``hurry_after``: as
        for :meth:`wait`."""
        try:
            while not self._done:
                await self._signalled(hurry_after)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                while not self._done:
                    await self._signalled()
        if self._waited.popleft():
            _waited.end()
        return self._done.popleft().unwrap()

    async def wait(self, *, hurry_after: float | None = STARVED_SECONDS) -> None:
        """Until a job's outcome is ready to collect, or :meth:`wake` was called (returns at once
        when one is ready; may return spuriously). Cancellable. ``hurry_after``: if the oldest
        job is not done after this many seconds, it is treated as waited for until collected
        (:meth:`submit`); None: never."""
        if not self._done:
            await self._signalled(hurry_after)

    def wake(self) -> None:
        """Make a task in :meth:`wait` return (from the trio thread): the store's idle commit
        loop waits here, so a commit the receiver hands to this thread wakes it only when it is
        done, with no pass of the loop in between."""
        os.write(self._write_fd, self._signal)

    def _oldest_not_waited_for(self) -> bool:
        """The oldest job not collected is nobody's wait (yet)."""
        return bool(self._waited) and not self._waited[0]

    async def _signalled(self, hurry_after: float | None = None) -> None:
        if hurry_after is not None and self._oldest_not_waited_for():
            with trio.move_on_after(hurry_after):
                await trio.lowlevel.wait_readable(self._read_fd)
            if not self._done and self._oldest_not_waited_for():
                self._waited[0] = True  # late: hurried until collected
                _waited.begin()
                return
        else:
            await trio.lowlevel.wait_readable(self._read_fd)
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 8)

    async def run(
        self,
        job: Callable[[], Any],
        *,
        waited: bool = True,
        hurry_after: float | None = STARVED_SECONDS,
    ) -> Any:
        """Run ``job`` and wait for it (nothing else may be waiting in :meth:`result`).
        ``waited=False``: work that must not hurry the daemon at once (the attestor's check), or
        at all (an analyst's query on an idle-priority thread: ``hurry_after=None``) — see
        :meth:`submit` and :meth:`wait`."""
        self.submit(job, waited=waited)
        return await self.result(hurry_after=hurry_after)

    def stop(self) -> None:
        """Finish the jobs queued, then end the thread (blocking: call it off the trio thread)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        while self._waited:  # outcomes nobody collected: they hurry nothing any more
            if self._waited.popleft():
                _waited.end()
        for fd in {self._read_fd, self._write_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _serve(self) -> None:
        name_os_thread(self._thread.name)
        if self._idle_priority:
            lowest_thread_priority()
        signal = self._signal
        while (job := self._jobs.get()) is not None:
            self._done.append(outcome.capture(job))
            del job  # a write's records are not held until the next one comes
            os.write(self._write_fd, signal)


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS as well (``top -H``, ``ps -L``, ``/proc/PID/task/*/comm``,
    py-spy), which otherwise shows every thread as ``python``: ``name`` without its
    ``foundry-`` prefix, cut to the 15 bytes Linux keeps. Trio names its own worker threads."""
    setthreadtitle(name.removeprefix("foundry-")[:15])


def lowest_thread_priority() -> None:
    """The calling thread at ``SCHED_IDLE`` (Linux: per thread), else at nice 19 where that works;
    unchanged elsewhere."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
