"""The edges' worker threads: at most ``EDGE_THREADS`` at once, apart from trio's default ones."""

from __future__ import annotations

import threading
import time

import trio
from foundry.kernel.edge.worker_threads import EDGE_THREADS, edge_threads, in_edge_thread


def test_the_edges_work_takes_at_most_its_own_threads_and_leaves_trios_free() -> None:
    lock = threading.Lock()
    running, most = 0, 0

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for _ in range(4 * EDGE_THREADS):
                nursery.start_soon(in_edge_thread, work)
            await trio.sleep(0.01)
            assert edge_threads().borrowed_tokens == EDGE_THREADS
            started = time.monotonic()
            await trio.to_thread.run_sync(lambda: None)  # (another's work waits for none)
            return time.monotonic() - started

    other_wait = trio.run(main)
    assert most == EDGE_THREADS
    assert other_wait < 0.04
