"""The one private part of connectrpc we reach into (pinned ``>=0.13,<0.14``; the canary is
``tests/kernel/edge/test_http_units.py``).

connectrpc picks its event-loop operations (deadlines, events, disconnect watch) with
``asyncio.get_running_loop()``: trio if there is no asyncio loop. Inside the daemon trio-asyncio's
loop is running for grpclib, and it answers that call from trio tasks too, so connectrpc would
use asyncio's timeouts in hypercorn's trio tasks ("Timeout should be used inside a task").
:func:`pick_loop_by_sniffio` makes it ask sniffio instead, which names the task's own library.
"""

from __future__ import annotations

from typing import Any

import sniffio


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
