"""The pipes actors feed their helper processes through (the attestor's signing process, the
store's trace writer, the telemetry exporter)."""

from __future__ import annotations

import contextlib
import fcntl

import trio

PIPE_BYTES = 1 << 20  # Linux's default maximum for an unprivileged process


def widen(pipe: object, size: int = PIPE_BYTES) -> None:
    """Give a pipe ``size`` bytes of buffer: a batch goes in one write, not a write per 64 KiB
    (the default) each followed by a wait for the reader and a trio wake-up. A pipe that is not
    one (or a system that refuses) is left as it is."""
    if isinstance(pipe, trio.lowlevel.FdStream):
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or a lower limit
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, size)
