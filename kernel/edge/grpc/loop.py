"""The asyncio loop grpclib runs in: trio-asyncio's, inside the daemon's trio run.

Its ready callbacks run in batches (``internals.batch_ready_callbacks``): trio-asyncio runs one
asyncio callback per trio scheduler pass, and grpclib handles a request in dozens of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio_asyncio
from foundry.kernel.edge.grpc.internals import batch_ready_callbacks, drop_cancelled_timers


@contextlib.asynccontextmanager
async def open_grpc_loop() -> AsyncIterator[None]:
    """The asyncio loop for grpclib, inside trio, batching ready callbacks where it can."""
    batch_ready_callbacks()
    drop_cancelled_timers()  # else one stays per call with a deadline until it is due
    async with trio_asyncio.open_loop():
        yield
