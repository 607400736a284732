"""Replies made off the trio thread, for either edge."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import betterproto2
from foundry.kernel.edge.grpc import upb_encode
from foundry.kernel.edge.grpc.bridge import in_worker_thread, on_trio
from foundry.kernel.edge.grpc.internals import Encoded
from foundry.kernel.edge.worker_threads import OffLoopReply

M = TypeVar("M", bound=betterproto2.Message)


async def reply_off_loop(make: Callable[[], M]) -> M:
    """A reply of many values made on a worker thread: for the HTTP edge the message, which it
    writes there as its client reads it (``routes.off_loop_reply``: JSON or protobuf); for
    grpclib its bytes (else serialized on the loop when grpclib sends it)."""
    if on_trio():
        return OffLoopReply(make)  # type: ignore[return-value]
    data = await in_worker_thread(lambda: upb_encode.encode(make()), heavy=True)
    return Encoded(data)  # type: ignore[return-value]
