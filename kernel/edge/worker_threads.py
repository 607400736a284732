"""The worker threads both edges hand a request's or reply's translation to.

A large request decoded, a large reply made JSON: pure Python, seconds of a thread each, taken
off the daemon's loop. They took trio's default threads, at most 40 — the limiter the store's
writes wait on too: 40 gzip bodies of 525 bytes each (500,000 statuses inflated) held every
thread, and the loop's slices of the interpreter lock, for minutes (a review). Here they have
threads of their own, per daemon run, in two pools: work known to be heavy (a large request's
decode, a reply known to be large) takes at most :data:`HEAVY_THREADS`; work of any size that
always takes a thread (a JSON reply, a gate's decision) takes at most :data:`LIGHT_THREADS`, so
a few-byte Status over Connect JSON does not queue behind 16 gzip bodies of 600,000 statuses
(it waited 44 s, a review found). What is past a pool's threads waits its turn.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

HEAVY_THREADS = 2  # on 2 cores: the loop keeps its share of the interpreter lock
LIGHT_THREADS = 6
_LIMITERS: trio.lowlevel.RunVar[tuple[trio.CapacityLimiter, trio.CapacityLimiter]] = (
    trio.lowlevel.RunVar("edge_threads")
)


def edge_threads(heavy: bool = False) -> trio.CapacityLimiter:
    """The edges' limiter of this trio run for heavy or other work (made at its first use)."""
    try:
        light_limiter, heavy_limiter = _LIMITERS.get()
    except LookupError:
        light_limiter = trio.CapacityLimiter(LIGHT_THREADS)
        heavy_limiter = trio.CapacityLimiter(HEAVY_THREADS)
        _LIMITERS.set((light_limiter, heavy_limiter))
    return heavy_limiter if heavy else light_limiter


async def in_edge_thread(work: Callable[..., T], *args: Any, heavy: bool = False) -> T:
    """``work(*args)`` on one of the edges' worker threads (from trio); ``heavy``: work known
    to take long (a large request or reply), in the pool of its own."""
    call = functools.partial(work, *args)
    return await trio.to_thread.run_sync(call, limiter=edge_threads(heavy))


class OffLoopReply:
    """A reply too large to make on the loop, for the HTTP edge, whose codecs take messages:
    ``make()`` makes its message on a worker thread, where it is also written as the client
    reads it (``http.routes.off_loop_reply``: proto3 JSON from the message itself — its bytes
    parsed back would have turned its Structs' integers into doubles, and their keys' order
    lost — or protobuf). ``key`` names it while it does not change (an ended run's GetRun:
    written once for all its callers), else None."""

    __slots__ = ("make", "key")

    def __init__(self, make: Callable[[], Any], key: Hashable | None = None) -> None:
        self.make, self.key = make, key


async def made_once(
    making: dict[Hashable, Any],
    key: Hashable,
    done: Callable[[], bool],
    make: Callable[[], Awaitable[None]],
    new_event: Callable[[], asyncio.Event | trio.Event],
) -> None:
    """``make()`` unless ``done()``; while another caller makes it, wait for that one (a
    maker cancelled leaves it to the next)."""
    while not done():
        waiting = making.get(key)
        if waiting is None:
            made = making[key] = new_event()
            try:
                await make()
            finally:
                del making[key]
                made.set()
            return
        await waiting.wait()
