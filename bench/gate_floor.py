"""The floor of a CheckChangeGate call in this architecture: ``python -m bench.gate_floor``.

A server that does strictly less than any correct daemon, on the same stack (DESIGN.md: grpclib
inside a trio process through trio-asyncio): for each CheckChangeGate call it parses the
request with upb, runs ``decide()`` over ``gate_check``'s typical request (built once, so no
conversion or checks), appends the reply's bytes to a file with one ``fdatasync`` (on a worker
thread, as the daemon's journal does) and answers with those bytes, encoded once at start. No
actors, no store, no attestation, no conversion. ``gate_check`` measures it beside the daemon,
with the same client and request, so the daemon's figure can be read against what the stack
itself costs on this machine at that moment.

It prints ``HOST:PORT`` on stdout once listening on 127.0.0.1:0, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from typing import Any

PATH = "/fleetforge.runtime.v1.RuntimeService/CheckChangeGate"


class RawCodec:
    """Bytes in, bytes out: the handler parses with upb itself, as the daemon does."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class FloorGate:
    def __init__(self, journal: int) -> None:
        from foundry.kernel.core.gate_policy import GatePolicy, decide
        from foundry.kernel.core.governance import StoredGate, decision_record
        from foundry.kernel.edge.grpc.fastproto import encode_response, upb_class

        from .gate_check import typical_request

        self._journal = journal
        self._request_class = upb_class("CheckChangeGateRequest")
        self._request = typical_request()
        self._policy = GatePolicy()
        self._decide = decide
        decision = decide(self._request, self._policy)
        record = decision_record("gate_floor", self._request, decision, datetime.now(UTC))
        self._reply = encode_response(StoredGate(record))

    def _durable(self) -> None:
        os.write(self._journal, self._reply)
        os.fdatasync(self._journal)

    async def check(self, stream: Any) -> None:
        import asyncio

        data = await stream.recv_message()
        self._request_class.FromString(data)
        self._decide(self._request, self._policy)
        await asyncio.get_running_loop().run_in_executor(None, self._durable)
        await stream.send_message(self._reply)

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        return {PATH: Handler(self.check, Cardinality.UNARY_UNARY, bytes, bytes)}


async def _serve(journal: int) -> None:
    import trio
    import trio_asyncio
    from grpclib.server import Server

    async with trio_asyncio.open_loop():
        server = Server([FloorGate(journal)], codec=RawCodec())
        await trio_asyncio.aio_as_trio(server.start)("127.0.0.1", 0)
        assert server._server is not None
        host, port = server._server.sockets[0].getsockname()[:2]
        print(f"{host}:{port}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        server.close()
        await trio_asyncio.aio_as_trio(server.wait_closed)()


def main() -> int:
    import trio

    with tempfile.TemporaryDirectory(prefix="foundry-gate-floor-") as folder:
        journal = os.open(os.path.join(folder, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            trio.run(_serve, journal)
        finally:
            os.close(journal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
