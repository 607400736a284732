"""Child processes of blocks and of the daemon: each in a session (and process group) of its own.

A terminal's Ctrl-C goes to its foreground process group. Were a block's command in the daemon's
group, it would die of the SIGINT meant for the daemon (``sh exited with -2``) before the daemon
could drain. In a session of its own, only the daemon is signalled, and the daemon decides: a
child is cancelled (step cancelled, timeout, shutdown past its grace) by signalling its whole
group, so what the command started dies with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

__all__ = ["KILL_AFTER", "MAX_OUTPUT", "run_capturing", "stop_process_group"]

KILL_AFTER = 5.0  # seconds between SIGTERM and SIGKILL to a cancelled child's group
# A command's output kept in memory, at most: its first bytes, then (past them) its last
# ``OUTPUT_TAIL``. ``trio.run_process`` kept it all: a command that wrote for its whole timeout
# (``yes``, a ``seq`` a payload sized) took the daemon's memory.
MAX_OUTPUT = 16 * 1024 * 1024
OUTPUT_TAIL = 64 * 1024
READ_BYTES = 64 * 1024


async def run_capturing(
    argv: Sequence[str], *, stdin: bytes, limit: int = MAX_OUTPUT, **options: Any
) -> tuple[int, bytes]:
    """Run ``argv`` in a process group of its own, stdout and stderr together; its exit code
    and output (:func:`read_kept`). A cancel stops the group (:func:`stop_process_group`) —
    even once the command itself has exited, when what it started still holds its output
    open (``sh -c "sleep 300 & echo started"``: trio delivers a cancel only while it waits for
    the command, and the sleep ran on)."""
    process: trio.Process | None = None
    try:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(
                trio.run_process, list(argv), stdin=stdin, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, check=False, start_new_session=True,
                deliver_cancel=stop_process_group, **options,
            ))  # fmt: skip
            assert process.stdout is not None
            output = await read_kept(process.stdout, limit)
    except BaseException as exc:
        if process is not None:
            _signal_group(process.pid, signal.SIGKILL)  # what is left of it
        sole = _sole(exc)
        if sole is not exc:
            raise sole from None  # the nursery's group of one: FileNotFoundError, as before
        raise
    assert process.returncode is not None
    return process.returncode, output


def _sole(exc: BaseException) -> BaseException:
    """The one exception a nursery's group holds, when it is not a cancellation (cancel scopes
    take groups of those), else ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        inner: BaseException = exc.exceptions[0]
        if not isinstance(inner, trio.Cancelled | BaseExceptionGroup):
            return inner
    return exc


async def read_kept(stream: trio.abc.ReceiveStream, limit: int) -> bytes:
    """All of ``stream`` up to ``limit`` bytes; past them, its first ``limit - OUTPUT_TAIL``
    bytes, a line saying how many were dropped, and its last ``OUTPUT_TAIL`` (read and
    dropped as they come, so that the command can go on to its end)."""
    head, tail, total = bytearray(), bytearray(), 0
    keep_head = max(limit - OUTPUT_TAIL, 0)
    while chunk := await stream.receive_some(READ_BYTES):
        total += len(chunk)
        if total <= limit:
            head += chunk
            continue
        if len(head) > keep_head:  # just went past the limit: the head's end starts the tail
            tail += head[keep_head:]
            del head[keep_head:]
        tail += chunk
        if len(tail) > OUTPUT_TAIL:
            del tail[: len(tail) - OUTPUT_TAIL]
    if total <= limit:
        return bytes(head)
    dropped = total - len(head) - len(tail)
    note = f"\n[foundry: {dropped:,} bytes of output dropped: kept {limit:,} at most]\n"
    return bytes(head) + note.encode() + bytes(tail)


async def stop_process_group(process: trio.Process) -> None:
    """``trio.run_process``'s ``deliver_cancel`` for a child started with
    ``start_new_session=True`` (its pid is its group's id): SIGTERM to the group, then SIGKILL to
    what is left of it after :data:`KILL_AFTER` seconds."""
    _signal_group(process.pid, signal.SIGTERM)
    with trio.move_on_after(KILL_AFTER):
        await process.wait()
    _signal_group(process.pid, signal.SIGKILL)  # the child's own children, too


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)
