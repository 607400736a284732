"""The daemon's own threads (``actors/threads.py``): a job someone waits for is not starved of the
interpreter lock by a busy trio thread."""

import sys
import threading
import time

import pytest
import trio
import trio.testing
from foundry.kernel.actors.threads import (
    WAITED_SWITCH_INTERVAL,
    JobThread,
    ThreadPool,
    in_thread,
    waited_for,
)

GUARD_SECONDS = 20.0
BUSY_SLICE_SECONDS = 300e-6  # as the run benchmark's busy shape: compute, yield, again


async def keep_busy(done: trio.Event, until: float) -> None:
    """Keep the trio thread from ever idling (a loaded daemon) until ``done`` or ``until``."""
    while not done.is_set() and time.monotonic() < until:
        slice_end = time.perf_counter() + BUSY_SLICE_SECONDS
        while time.perf_counter() < slice_end:
            pass
        await trio.lowlevel.checkpoint()


def hurried() -> bool:
    """The switch interval is the short one (CPython keeps it in whole microseconds)."""
    return sys.getswitchinterval() == pytest.approx(WAITED_SWITCH_INTERVAL)


def needs_the_lock_often() -> int:
    """A job that lets go of the interpreter lock and needs it back, many times (as an append
    does around its write and its sync)."""
    total = 0
    for n in range(50):
        time.sleep(0.0002)
        total += sum(range(n))
    return total


def test_waited_for_shortens_the_switch_interval_while_anything_is_waited_for():
    usual = sys.getswitchinterval()
    with waited_for():
        assert hurried()
        with waited_for():
            assert hurried()
        assert hurried()  # the outer one still waits
    assert sys.getswitchinterval() == usual


async def test_a_waited_job_hurries_until_its_result_is_collected():
    usual = sys.getswitchinterval()
    thread = JobThread("test-hurry")
    thread.start()
    gate = threading.Event()
    try:
        thread.submit(gate.wait, waited=True)
        assert hurried()
        gate.set()
        assert await thread.result() is True
        assert sys.getswitchinterval() == usual
        thread.submit(lambda: 7)  # nobody waits for it: no hurry
        assert sys.getswitchinterval() == usual
        assert await thread.result() == 7
    finally:
        gate.set()
        await trio.to_thread.run_sync(thread.stop)


async def test_a_job_nobody_waited_for_is_hurried_once_it_is_late():
    usual = sys.getswitchinterval()
    thread = JobThread("test-late")
    thread.start()
    gate = threading.Event()
    got: list[object] = []
    try:
        with trio.fail_after(GUARD_SECONDS):
            async with trio.open_nursery() as nursery:
                thread.submit(gate.wait)

                async def collect() -> None:
                    got.append(await thread.result(hurry_after=0.5))

                nursery.start_soon(collect)
                await trio.testing.wait_all_tasks_blocked()  # collecting, its timer running
                assert sys.getswitchinterval() == usual  # not late yet
                await trio.sleep(0.6)  # late now
                assert hurried()
                gate.set()
        assert got == [True]
        assert sys.getswitchinterval() == usual
        # The store's idle loop waits in ``wait``: a late job there is hurried too, until its
        # outcome is collected.
        gate.clear()
        thread.submit(gate.wait)
        await thread.wait(hurry_after=0.01)  # returns once it is late (a spurious return)
        assert hurried()
        gate.set()
        assert await thread.result() is True
        assert sys.getswitchinterval() == usual
    finally:
        gate.set()
        await trio.to_thread.run_sync(thread.stop)


async def test_a_waited_job_finishes_while_the_loop_never_idles():
    """Behind a task that computes and yields, again and again, a thread that needs the lock
    back many times gets it: its job ends long before the loop would idle."""
    thread = JobThread("test-busy")
    thread.start()
    done = trio.Event()
    until = time.monotonic() + GUARD_SECONDS
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_busy, done, until)
            result = await thread.run(needs_the_lock_often)
            through = await in_thread(needs_the_lock_often)  # trio's own threads too
            still_busy = time.monotonic() < until
            done.set()
        assert result == through == sum(sum(range(n)) for n in range(50))
        assert still_busy, "the jobs ended only once the busy loop gave up"
    finally:
        done.set()
        await trio.to_thread.run_sync(thread.stop)


async def test_a_stopped_thread_leaves_no_hurry_behind():
    """An outcome nobody collected (a daemon stopping mid-commit) does not keep the interval
    short for the rest of the process."""
    usual = sys.getswitchinterval()
    thread = JobThread("test-stop")
    thread.start()
    thread.submit(lambda: None, waited=True)
    assert hurried()
    await trio.to_thread.run_sync(thread.stop)
    assert sys.getswitchinterval() == usual


# --- the pool of threads for executions' files ----------------------------------------------


async def test_the_pool_answers_each_of_many_waiters_with_its_own_value_or_exception():
    pool = ThreadPool("test-pool", 3)
    answers: dict[int, object] = {}

    def job(n: int) -> int:
        time.sleep(0.001)
        if n % 7 == 0:
            raise ValueError(f"job {n}")
        return n * n

    async def ask(n: int) -> None:
        try:
            answers[n] = await pool.run(job, n)
        except ValueError as exc:
            answers[n] = str(exc)

    async with trio.open_nursery() as nursery:
        for n in range(60):
            nursery.start_soon(ask, n)
    assert answers == {n: f"job {n}" if n % 7 == 0 else n * n for n in range(60)}
    assert 1 <= pool.threads <= 3


async def test_the_pool_runs_at_most_its_size_at_once_and_hurries_while_waited_for():
    pool = ThreadPool("test-pool-size", 2)
    running, most, lock = 0, 0, threading.Lock()
    seen_hurried: list[bool] = []

    def job() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        seen_hurried.append(hurried())
        time.sleep(0.01)
        with lock:
            running -= 1

    usual = sys.getswitchinterval()
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(pool.run, job)
    assert most == 2
    assert seen_hurried == [True] * 8
    assert sys.getswitchinterval() == usual


async def test_a_pool_job_is_not_abandoned_when_its_caller_is_cancelled():
    """As with trio.to_thread.run_sync: the job runs to its end; the cancellation comes after."""
    pool = ThreadPool("test-pool-cancel", 1)
    started, release = threading.Event(), threading.Event()
    finished: list[str] = []
    answered: list[str] = []

    def job() -> str:
        started.set()
        release.wait(GUARD_SECONDS)
        finished.append("done")
        return "done"

    scope = trio.CancelScope()

    async def cancel_once_started() -> None:
        await trio.to_thread.run_sync(started.wait, GUARD_SECONDS)
        scope.cancel()
        await trio.sleep(0.05)  # the job still runs: nothing came back yet
        assert finished == []
        release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_once_started)
        with scope:
            answered.append(await pool.run(job))
            await trio.lowlevel.checkpoint()  # where the cancellation comes
    assert scope.cancelled_caught
    assert finished == answered == ["done"]


def test_two_trio_runs_share_a_pool_and_each_gets_its_own_answers():
    pool = ThreadPool("test-pool-runs", 2)
    results: dict[str, list[int]] = {}

    def one_run(name: str, offset: int) -> None:
        async def main() -> None:
            got: list[int] = []
            async with trio.open_nursery() as nursery:
                for n in range(20):

                    async def ask(n: int = n) -> None:
                        got.append(await pool.run(lambda: offset + n))

                    nursery.start_soon(ask)
            results[name] = sorted(got)

        trio.run(main)

    threads = [threading.Thread(target=one_run, args=(f"run{i}", 100 * i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD_SECONDS)
    assert results == {f"run{i}": [100 * i + n for n in range(20)] for i in range(2)}


async def test_idle_pool_threads_end_and_new_work_starts_them_again():
    pool = ThreadPool("test-pool-idle", 2, idle_seconds=0.05)
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(pool.run, time.sleep, 0.01)
    assert pool.threads == 2
    with trio.fail_after(GUARD_SECONDS):
        while pool.threads:  # noqa: ASYNC110 - the threads end on their own: nothing to wait on
            await trio.sleep(0.02)
    assert await pool.run(lambda: "again") == "again"
    assert pool.threads == 1


async def test_a_pool_that_cannot_start_a_thread_fails_the_job_and_stays_usable(monkeypatch):
    pool = ThreadPool("test-pool-refused", 2)
    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError, match="start new thread"):
        await pool.run(lambda: "never")
    assert pool.threads == 0
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert await pool.run(lambda: "then") == "then"
    assert pool.threads == 1


def os_thread_name() -> str:
    """The calling thread's name as the OS keeps it."""
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
        return comm.read().strip()


async def os_name_in_job_thread(name: str) -> str:
    thread = JobThread(name)
    thread.start()
    try:
        found: str = await thread.run(os_thread_name)
        return found
    finally:
        await trio.to_thread.run_sync(thread.stop)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
async def test_the_os_sees_each_thread_by_its_name_without_the_foundry_prefix():
    assert await os_name_in_job_thread("foundry-journal") == "journal"
    assert await os_name_in_job_thread("a-name-longer-than-fifteen") == "a-name-longer-t"  # cut
    assert await ThreadPool("foundry-artifacts", 1).run(os_thread_name) == "artifacts"
