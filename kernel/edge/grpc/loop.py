"""trio-asyncio's loop, running the asyncio callbacks that are ready in batches.

trio-asyncio runs one asyncio callback per trio scheduler pass: each costs a cancel scope and an
awaited channel receive. grpclib handles one request in dozens of callbacks, so a unary RPC paid
that many passes. After each awaited callback, this also runs the callbacks already queued (up to
``BATCH``, without waiting) — what an asyncio loop does with its ready queue — before yielding to
trio again.
"""

from __future__ import annotations

from typing import Any

import trio
from trio_asyncio._base import BaseTrioEventLoop  # no public hook for this

BATCH = 64

_one_callback = BaseTrioEventLoop._main_loop_one


async def _ready_callbacks(self: Any, no_wait: bool = False) -> None:
    await _one_callback(self, no_wait)
    for _ in range(BATCH):
        if self._stopped.is_set():
            return
        try:
            await _one_callback(self, no_wait=True)
        except trio.WouldBlock:
            return


def run_ready_callbacks_in_batches() -> None:
    """Install the batching (idempotent); the daemon calls it before opening its loop."""
    BaseTrioEventLoop._main_loop_one = _ready_callbacks  # trio_asyncio ships no types
