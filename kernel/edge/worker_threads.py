"""The worker threads both edges hand a request's or reply's translation to.

A large request decoded, a large reply made JSON: pure Python, seconds of a thread each, taken
off the daemon's loop. They took trio's default threads, at most 40 — the limiter the store's
writes wait on too: 40 gzip bodies of 525 bytes each (500,000 statuses inflated) held every
thread, and the loop's slices of the interpreter lock, for minutes (a review). Here they share
:data:`EDGE_THREADS` threads of their own, per daemon run; what is past them waits its turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")

EDGE_THREADS = 4  # on 2 cores: the loop keeps a share of the interpreter lock between them
_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("edge_threads")


def edge_threads() -> trio.CapacityLimiter:
    """The edges' limiter of this trio run (made at its first use)."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(EDGE_THREADS)
        _LIMITER.set(limiter)
        return limiter


async def in_edge_thread(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on one of the edges' worker threads (from trio)."""
    return await trio.to_thread.run_sync(work, *args, limiter=edge_threads())
