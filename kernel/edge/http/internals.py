"""The two private parts of connectrpc we reach into (pinned ``>=0.13,<0.14``; the canaries
are in ``tests/kernel/edge/test_http_units.py``).

:func:`connect_error_body`: the fast unary path (``unary.py``) writes a Connect error exactly as
connectrpc does (its HTTP status table and JSON body), with connectrpc's own ``ConnectWireError``.

connectrpc picks its event-loop operations (deadlines, events, disconnect watch) with
``asyncio.get_running_loop()``: trio if there is no asyncio loop. Inside the daemon trio-asyncio's
loop is running for grpclib, and it answers that call from trio tasks too, so connectrpc would
use asyncio's timeouts in hypercorn's trio tasks ("Timeout should be used inside a task").
:func:`pick_loop_by_sniffio` makes it ask sniffio instead, which names the task's own library.
"""

from __future__ import annotations

from typing import Any

import sniffio
from connectrpc._protocol import ConnectWireError
from connectrpc.errors import ConnectError


def connect_error_body(error: ConnectError) -> tuple[int, bytes]:
    """The HTTP status and JSON body connectrpc answers a unary Connect call failing with
    ``error``."""
    wire = ConnectWireError.from_exception(error)
    return wire.to_http_status().code, wire.to_json_bytes()


def pick_loop_by_sniffio() -> None:
    from connectrpc import _server_async
    from connectrpc._server_trio import TrioLoop

    if getattr(_server_async._current_loop, "by_sniffio", False):
        return
    asyncio_loop = _server_async._current_loop

    def current_loop() -> Any:
        if sniffio.current_async_library() == "trio":
            return TrioLoop()
        return asyncio_loop()

    current_loop.by_sniffio = True  # type: ignore[attr-defined]
    _server_async._current_loop = current_loop
