"""A watch on the trio thread, from a thread of its own.

Everything the daemon does for its clients, runs and chains takes turns on the trio thread. A
block that holds it (``time.sleep`` in an async block, a synchronous block that never returns)
held every call for as long — 4 ms answers took 6 s — and the log said nothing: the execution
was reported "timed out after 2s", naming neither the stall nor what caused it. The trio thread
marks each time it comes round (:func:`watch_the_loop`, every ``TICK`` seconds); the watcher
thread, finding no mark for ``STALL_SECONDS``, logs one warning naming the line the trio thread
is on (the innermost frame outside trio and the kernel's own scheduling: the block's line), and
one line when the loop comes round again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import FrameType

import trio

__all__ = ["STALL_SECONDS", "watch_the_loop", "where"]

log = logging.getLogger("foundry.loop")

STALL_SECONDS = 2.0
TICK = 0.25
# Frames of these (trio's loop, the kernel's execution of blocks, the standard library a block
# calls — not the packages installed beside it) are not where a stall is.
_TRIO, _KERNEL = (
    os.path.dirname(module.__file__ or "") + os.sep
    for module in (trio, sys.modules[__name__.rpartition(".actors")[0]])
)
_STANDARD_LIBRARY = os.path.dirname(os.__file__) + os.sep
_INSTALLED = f"{os.sep}site-packages{os.sep}"


async def watch_the_loop(stall_seconds: float = STALL_SECONDS) -> None:
    """Mark the loop's turns until cancelled, while a watcher thread looks at the marks."""
    turned = [time.monotonic()]
    stopped = threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(turned, threading.get_ident(), stopped, stall_seconds),
        name="foundry-loop-watch", daemon=True,
    )  # fmt: skip
    watcher.start()
    try:
        while True:
            turned[0] = time.monotonic()
            await trio.sleep(TICK)
    finally:
        stopped.set()


def _watch(
    turned: list[float], trio_thread: int, stopped: threading.Event, stall_seconds: float
) -> None:
    stalled_since: float | None = None
    while not stopped.wait(TICK):
        last = turned[0]
        late = time.monotonic() - last
        if stalled_since is None and late >= stall_seconds:
            stalled_since = last
            frame = sys._current_frames().get(trio_thread)
            log.warning("the daemon's loop has not come round for %.1f s: every call, run and "
                        "chain waits. The trio thread is at %s", late, where(frame))  # fmt: skip
        elif stalled_since is not None and last > stalled_since:
            log.warning("the daemon's loop came round again after %.1f s",
                        last - stalled_since)  # fmt: skip
            stalled_since = None


def where(frame: FrameType | None) -> str:
    """``file:line (function)`` of the innermost frame of ``frame``'s task (its frames up to
    trio's) that is neither the kernel's nor the standard library's — a block's code — else of
    ``frame`` itself."""
    innermost = frame
    while frame is not None:
        file = frame.f_code.co_filename
        if file.startswith(_TRIO):
            break  # the task's frames end here: what called trio.run is not the cause
        if _may_be_the_cause(file):
            innermost = frame
            break
        frame = frame.f_back
    if innermost is None:
        return "an unknown place"
    code = innermost.f_code
    return f"{code.co_filename}:{innermost.f_lineno} ({code.co_name})"


def _may_be_the_cause(file: str) -> bool:
    if file.startswith(_KERNEL):
        return False
    return not file.startswith(_STANDARD_LIBRARY) or _INSTALLED in file
