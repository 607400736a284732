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
