"""The asyncio loop grpclib runs in: trio-asyncio's, inside the daemon's trio run.

Its ready callbacks run in batches (``internals.batch_ready_callbacks``): trio-asyncio runs one
asyncio callback per trio scheduler pass, and grpclib handles a request in dozens of them.

An error an asyncio callback lets escape is logged and goes no further (:func:`log_loop_error`):
trio-asyncio's default handler raises it in the loop's nursery, which stopped the daemon — and
one is a client's to cause: h2 refuses a header that is not ASCII by raising from the
connection's ``data_received``. asyncio closes that connection's transport itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import trio_asyncio
from foundry.kernel.edge.connections import RecurringWarning
from foundry.kernel.edge.grpc.internals import batch_ready_callbacks, drop_cancelled_timers

log = logging.getLogger("foundry.grpc")
REFUSED_BYTES = RecurringWarning(log)  # a client's to cause, once a connection


@contextlib.asynccontextmanager
async def open_grpc_loop() -> AsyncIterator[None]:
    """The asyncio loop for grpclib, inside trio, batching ready callbacks where it can."""
    batch_ready_callbacks()
    drop_cancelled_timers()  # else one stays per call with a deadline until it is due
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_loop_error)
        yield


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One log record for an error in an asyncio callback (its connection, if it was a
    protocol's, is closed by asyncio); the daemon serves on."""
    exception = context.get("exception")
    message = context.get("message") or "error in the gRPC loop"
    if isinstance(exception, UnicodeError):  # a client's bytes h2 refused: no traceback
        REFUSED_BYTES.warning("%s: %s (the connection is closed)", message, exception)
        return
    log.error("%s", message, exc_info=exception)
