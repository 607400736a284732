"""Every use of grpclib's internals that the message-size limit needs, in one place.

grpclib 0.4 has no public maximum for a received message: ``grpclib.server.Stream.recv_message``
reads the 5-byte gRPC prefix and then the whole announced length, whatever it is. We replace the
module-level ``recv_message`` that ``grpclib.server`` imported with one that refuses an oversized
message from its prefix, before its body is read — HTTP/2 flow control then keeps the peer from
sending more than one stream window (4 MiB). ``tests/kernel/test_grpc_internals.py`` is the
canary: it fails, saying what changed, if an upgrade moves what this touches.
"""

from __future__ import annotations

from typing import Any

import grpclib.server
import grpclib.stream
from grpclib import GRPCError
from grpclib.const import Status

ORIGINAL_RECV_MESSAGE = grpclib.stream.recv_message


def install_message_limit(limit: int) -> None:
    """Refuse (RESOURCE_EXHAUSTED) any received message longer than ``limit`` bytes."""

    async def recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
        prefix = await stream.recv_data(5)
        if not prefix:
            return None
        if prefix[0]:
            raise GRPCError(Status.UNIMPLEMENTED, "compressed requests are not supported")
        length = int.from_bytes(prefix[1:5], "big")
        if length > limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request: {length} bytes is over the {limit}-byte message limit "
                "([daemon] max_message_bytes)",
            )
        data = await stream.recv_data(length)
        if len(data) != length:
            raise GRPCError(Status.INVALID_ARGUMENT, "request: the message was cut short")
        return codec.decode(data, message_type)

    grpclib.server.recv_message = recv_message  # type: ignore[attr-defined]  # not re-exported
