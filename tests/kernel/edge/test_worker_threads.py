"""The edges' worker threads: two pools of their own, apart from trio's default threads."""

from __future__ import annotations

import threading
import time

import trio
from foundry.kernel.edge.worker_threads import (
    HEAVY_THREADS,
    LIGHT_THREADS,
    edge_threads,
    in_edge_thread,
)


class Counting:
    """Work that takes ``seconds`` and counts how many run at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.running, self.most = seconds, 0, 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1


def test_each_pool_takes_at_most_its_threads_and_leaves_trios_free() -> None:
    heavy, light = Counting(0.05), Counting(0.05)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for _ in range(3 * HEAVY_THREADS):
                nursery.start_soon(lambda: in_edge_thread(heavy, heavy=True))
            for _ in range(3 * LIGHT_THREADS):
                nursery.start_soon(in_edge_thread, light)
            await trio.sleep(0.01)
            assert edge_threads(heavy=True).borrowed_tokens == HEAVY_THREADS
            assert edge_threads().borrowed_tokens == LIGHT_THREADS
            started = time.monotonic()
            await trio.to_thread.run_sync(lambda: None)  # (another's work waits for none)
            return time.monotonic() - started

    other_wait = trio.run(main)
    assert (heavy.most, light.most) == (HEAVY_THREADS, LIGHT_THREADS)
    assert other_wait < 0.04


def test_light_work_does_not_queue_behind_heavy_work() -> None:
    """(16 gzip bodies of 600,000 statuses each held a Connect JSON Status 44 s, a review.)"""
    heavy = Counting(0.5)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for _ in range(8 * HEAVY_THREADS):
                nursery.start_soon(lambda: in_edge_thread(heavy, heavy=True))
            await trio.sleep(0.01)
            started = time.monotonic()
            await in_edge_thread(lambda: None)
            waited = time.monotonic() - started
            nursery.cancel_scope.cancel()
            return waited

    assert trio.run(main) < 0.2
