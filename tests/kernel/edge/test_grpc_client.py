"""The CLI's gRPC client (``edge/grpc/client.py``): what a connection that failed, was lost or
had a call reset is called, against a real grpclib server on 127.0.0.1."""

from __future__ import annotations

import asyncio

import grpclib.server
import pytest
from foundry.kernel.cli.common import daemon_unreachable
from foundry.kernel.edge.grpc.client import CallReset, connected
from foundry.kernel.edge.grpc.server import bind
from foundry.proto import foundry_api as api
from grpclib.const import Cardinality, Handler
from grpclib.health.service import Health

STATUS = "/foundry.Foundry/Status"


class Resetting:
    """Status answered by resetting its stream, as the daemon gives up on a reply."""

    async def serve(self, stream: grpclib.server.Stream) -> None:
        await stream.recv_message()
        await stream.cancel()  # RST_STREAM

    def __mapping__(self) -> dict[str, Handler]:
        return {STATUS: Handler(self.serve, Cardinality.UNARY_UNARY, api.StatusRequest,
                                api.StatusResponse)}  # fmt: skip


async def call_reset() -> BaseException:
    server = grpclib.server.Server([Resetting(), Health()])
    sock = bind("127.0.0.1", 0)
    await server.start(sock=sock)
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    try:
        with pytest.raises(ConnectionError) as caught:
            async with connected(address) as channel:
                await api.FoundryStub(channel).status(api.StatusRequest())
        return caught.value
    finally:
        server.close()
        await server.wait_closed()


def test_a_call_the_daemon_reset_is_named_so_not_a_lost_connection():
    """Once the daemon had answered, any ended stream was "lost the connection" (a review): a
    reset of one call is not the connection's end, and no TLS hint either."""
    error = asyncio.run(call_reset())
    assert isinstance(error, CallReset), error
    said = daemon_unreachable("127.0.0.1:1", error)
    assert said.startswith("the daemon at 127.0.0.1:1 reset the call: Stream reset"), said


def test_a_connection_closed_without_a_word_is_still_a_readable_line():
    """A TLS connection the daemon closed at its cap is a ConnectionResetError of no words: the
    line ended at "cannot reach the daemon at H:P: " (a hunt)."""
    said = daemon_unreachable("127.0.0.1:1", ConnectionResetError())
    assert said == ("cannot reach the daemon at 127.0.0.1:1: ConnectionResetError: closed before "
                    "any answer (the daemon may be at its [daemon] max_connections)")  # fmt: skip
