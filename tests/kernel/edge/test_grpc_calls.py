"""``server.Calls``, the gRPC calls in flight that a graceful stop waits for: it counts and waits
for the running ones, refuses new ones while draining, and does not keep finished ones."""

from __future__ import annotations

import asyncio

import pytest
from foundry.kernel.edge.grpc.server import Calls
from grpclib import GRPCError
from grpclib.const import Status


async def call(calls: Calls, release: asyncio.Event | None = None) -> None:
    calls.enter()
    if release is not None:
        await release.wait()


def test_calls_wait_for_the_running_ones_and_keep_no_finished_ones():
    async def go() -> tuple[int, int, int, int]:
        calls = Calls()
        for _ in range(1_000):
            await asyncio.create_task(call(calls))
        kept = len(calls._tasks)
        release = asyncio.Event()
        running = [asyncio.create_task(call(calls, release)) for _ in range(3)]
        await asyncio.sleep(0)
        in_flight = len(calls)
        left_after_grace = await calls.finished(0.01)
        asyncio.get_running_loop().call_later(0.01, release.set)
        left = await calls.finished(5)
        assert all(task.done() for task in running)
        return kept, in_flight, left_after_grace, left

    kept, in_flight, left_after_grace, left = asyncio.run(go())
    assert kept < 64  # swept, not one per call ever made
    assert (in_flight, left_after_grace, left) == (3, 3, 0)


def test_calls_refuse_new_calls_once_not_accepting():
    async def go() -> None:
        calls = Calls()
        calls.accepting = False
        await call(calls)

    with pytest.raises(GRPCError) as caught:
        asyncio.run(go())
    assert caught.value.status == Status.UNAVAILABLE
