"""How many items wait in a trio memory channel: the tap broker asks once per item it delivers.

``MemorySendChannel.statistics()`` answers by building an attrs object (~1.5 µs a call). trio's
channel keeps its buffer in a private deque (``_state.data``), whose length is that answer; this
module is the only place the kernel reads trio's private state, and it checks at import that the
field is there, and what it holds, falling back to ``statistics()`` when a trio release changes it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import trio


def _statistics(send: trio.MemorySendChannel[Any]) -> int:
    return send.statistics().current_buffer_used


def _private(send: trio.MemorySendChannel[Any]) -> int:
    return len(send._state.data)


def _pick() -> Callable[[trio.MemorySendChannel[Any]], int]:
    send, receive = trio.open_memory_channel[int](2)
    try:
        send.send_nowait(1)
        data = getattr(getattr(send, "_state", None), "data", None)
        if isinstance(data, deque) and list(data) == [1] and _statistics(send) == 1:
            return _private
        return _statistics
    finally:
        send.close()
        receive.close()


buffered: Callable[[trio.MemorySendChannel[Any]], int] = _pick()
"""The number of items in ``send``'s buffer (``statistics().current_buffer_used``)."""
